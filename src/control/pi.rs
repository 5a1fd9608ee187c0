//! A proportional-integral loop on made-up time: the caller passes `now` and the error, the loop
//! answers with its output, kept within bounds and moving at most `max_rate` per second.
//!
//! Anti-windup by resetting: whenever the bounds or the rate limit change the output, the
//! integral is set to the output actually given, the proportional part left out. The integral
//! therefore never runs away while the output is pinned, a zero error holds the output where a
//! limit left it, and the output leaves a bound as soon as the error changes sign. (Tracking,
//! integral = output - P, parks the integral a whole P away from the bound: with errors of
//! either sign the output would then leave the bound in the direction opposite to the error,
//! e.g. a threshold pinned at its maximum because the edge is behind would drop by P as soon as
//! the queue reached its target.)

use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PiSettings {
    /// Output per unit of error.
    pub kp: f32,
    /// Output per unit of error and second.
    pub ki: f32,
    pub min: f32,
    pub max: f32,
    /// Largest change of the output per second.
    pub max_rate: f32,
}

/// What limited the last step, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Limit {
    Min,
    Max,
    Rate,
}

/// One step of the loop, for the controller's explanation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PiStep {
    pub output: f32,
    pub p: f32,
    pub i: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<Limit>,
}

#[derive(Debug, Clone)]
pub struct PiLoop {
    settings: PiSettings,
    integral: f32,
    output: f32,
    last: Instant,
}

impl PiLoop {
    /// Starts at `initial` (clamped to the bounds) at time `now`.
    pub fn new(settings: PiSettings, initial: f32, now: Instant) -> Self {
        let output = initial.clamp(settings.min, settings.max);
        PiLoop { settings, integral: output, output, last: now }
    }

    pub fn output(&self) -> f32 {
        self.output
    }

    /// Advances the loop to `now` with `error` (positive raises the output).
    pub fn update(&mut self, now: Instant, error: f32) -> PiStep {
        let s = self.settings;
        let dt = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        let p = s.kp * error;
        let wanted = p + self.integral + s.ki * error * dt;
        let bounded = wanted.clamp(s.min, s.max);
        let step = s.max_rate * dt;
        let output = bounded.clamp(self.output - step, self.output + step);
        let limit = if output != bounded {
            Some(Limit::Rate)
        } else if bounded != wanted {
            Some(if bounded == s.max { Limit::Max } else { Limit::Min })
        } else {
            None
        };
        self.integral = if limit.is_some() { output } else { wanted - p };
        self.output = output;
        PiStep { output, p, i: self.integral, limit }
    }

    /// Moves the clock on without acting: while the output has no effect (the remote path is
    /// shut), time passes but nothing is integrated and the output stays where it is.
    pub fn hold(&mut self, now: Instant) {
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TICK: Duration = Duration::from_millis(200);

    fn settings() -> PiSettings {
        PiSettings { kp: 0.2, ki: 0.5, min: 0.1, max: 0.9, max_rate: 0.5 }
    }

    /// Runs `ticks` steps of `TICK` with the error given by `error(output)`; returns the outputs.
    fn run(pi: &mut PiLoop, clock: &mut Instant, ticks: usize, error: impl Fn(f32) -> f32) -> Vec<f32> {
        (0..ticks)
            .map(|_| {
                *clock += TICK;
                let e = error(pi.output());
                pi.update(*clock, e).output
            })
            .collect()
    }

    #[test]
    fn step_response_settles_on_the_setpoint_without_steady_state_error() {
        // A plant whose measurement equals the output (the uniform score: threshold = remote
        // fraction); the setpoint steps from 0.3 to 0.6.
        let mut clock = Instant::now();
        let mut pi = PiLoop::new(settings(), 0.3, clock);
        let outputs = run(&mut pi, &mut clock, 100, |y| 0.6 - y);
        let last = *outputs.last().unwrap();
        assert!((last - 0.6).abs() < 1e-3, "settles at the setpoint: {last}");
        assert!(outputs.windows(2).all(|w| w[1] >= w[0] - 1e-6), "rises monotonically, no overshoot: {outputs:?}");
        assert!(outputs.iter().all(|&y| y <= 0.6 + 1e-6));
        // Half way there within a few seconds (time constant about 1/ki of the plant's unit gain).
        let half = outputs.iter().position(|&y| y >= 0.45).unwrap();
        assert!(half <= 15, "half the step after {half} ticks");
    }

    #[test]
    fn output_stays_within_bounds_and_moves_at_most_max_rate() {
        let mut clock = Instant::now();
        let mut pi = PiLoop::new(settings(), 0.5, clock);
        let up = run(&mut pi, &mut clock, 50, |_| 10.0);
        assert_eq!(*up.last().unwrap(), 0.9);
        let mut previous = 0.5;
        for y in up.iter().chain(run(&mut pi, &mut clock, 50, |_| -10.0).iter()) {
            assert!((0.1..=0.9).contains(y), "{y}");
            assert!((y - previous).abs() <= 0.5 * TICK.as_secs_f32() + 1e-6, "{previous} -> {y}");
            previous = *y;
        }
        assert_eq!(previous, 0.1);
        assert_eq!(PiLoop::new(settings(), 7.0, clock).output(), 0.9, "the start is clamped too");
    }

    #[test]
    fn no_windup_the_output_leaves_a_bound_as_soon_as_the_error_turns() {
        let mut clock = Instant::now();
        let mut pi = PiLoop::new(settings(), 0.5, clock);
        // A minute pinned at the upper bound with a large error: a plain integral would have
        // grown by 0.5 * 60 = 30 and need a minute of negative error to come back.
        run(&mut pi, &mut clock, 300, |_| 1.0);
        assert_eq!(pi.output(), 0.9);
        clock += TICK;
        let step = pi.update(clock, -0.2);
        assert!(step.output < 0.9, "leaves the bound at the first negative error: {step:?}");
        assert!(step.i <= 0.9 + 1e-6, "integral tracks the output: {step:?}");
    }

    #[test]
    fn limits_are_reported() {
        let mut clock = Instant::now();
        let mut pi = PiLoop::new(settings(), 0.5, clock);
        clock += TICK;
        assert_eq!(pi.update(clock, 5.0).limit, Some(Limit::Rate));
        clock += Duration::from_secs(10);
        assert_eq!(pi.update(clock, 5.0).limit, Some(Limit::Max));
        clock += Duration::from_secs(10);
        assert_eq!(pi.update(clock, -5.0).limit, Some(Limit::Min));
        // Back to zero error: the output holds where the bound left it, nothing limits it.
        clock += TICK;
        assert_eq!(pi.update(clock, 0.0), PiStep { output: 0.1, p: 0.0, i: 0.1, limit: None });
    }

    #[test]
    fn a_limited_output_moves_only_in_the_direction_of_the_error() {
        let mut clock = Instant::now();
        let mut pi = PiLoop::new(settings(), 0.5, clock);
        // Pinned at the top by a large error, then the error falls but stays positive.
        run(&mut pi, &mut clock, 50, |_| 1.0);
        let outputs = run(&mut pi, &mut clock, 5, |_| 0.2);
        assert!(outputs.iter().all(|&y| y == 0.9), "still asked to raise: stays at the bound: {outputs:?}");
        // A rate-limited rise that meets its target holds there instead of falling back by P.
        let mut pi = PiLoop::new(settings(), 0.2, clock);
        let rising = run(&mut pi, &mut clock, 2, |_| 3.0);
        let held = run(&mut pi, &mut clock, 3, |_| 0.0);
        assert!(held.iter().all(|&y| y == *rising.last().unwrap()), "{rising:?} then {held:?}");
    }

    #[test]
    fn hold_lets_time_pass_without_integrating() {
        let mut clock = Instant::now();
        let mut pi = PiLoop::new(settings(), 0.5, clock);
        clock += Duration::from_secs(30);
        pi.hold(clock);
        clock += TICK;
        let step = pi.update(clock, 1.0);
        // Only one tick's worth of change, not 30 s of integral or rate allowance.
        assert!(step.output <= 0.5 + 0.5 * TICK.as_secs_f32() + 1e-6, "{step:?}");
    }
}
