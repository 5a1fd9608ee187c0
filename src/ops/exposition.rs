//! Writing values read at scrape time (the counters and gauges the stages keep anyway) through
//! prometheus-client's OpenMetrics encoder, so the services keep one set of counters and
//! `/metrics` only reads them.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::metrics::health::Condition;

/// Every condition, for the `condition` state set (one of them is 1).
const CONDITIONS: [&str; 5] = ["starting", "flowing", "idle", "stalled", "stopping"];

/// A source of metrics read at scrape time.
pub(super) trait Scraped: Send + Sync + 'static {
    fn scrape(&self, scrape: &mut Scrape) -> fmt::Result;
}

/// A registry whose metrics, named `<prefix>_...`, are read from `source` on every scrape.
pub(super) fn registry(prefix: &str, source: Arc<impl Scraped>) -> Registry {
    let mut registry = Registry::with_prefix(prefix);
    registry.register_collector(Box::new(Collected(source)));
    registry
}

struct Collected<T>(Arc<T>);

/// prometheus-client wants collectors printable; the sources' insides are not worth printing.
impl<T> fmt::Debug for Collected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Collected")
    }
}

impl<T: Scraped> Collector for Collected<T> {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        self.0.scrape(&mut Scrape(encoder))
    }
}

/// One scrape's encoder.
pub(super) struct Scrape<'a>(DescriptorEncoder<'a>);

impl<'a> Scrape<'a> {
    pub(super) fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        ConstCounter::new(value).encode(self.0.encode_descriptor(name, help, None, MetricType::Counter)?)
    }

    pub(super) fn gauge(&mut self, name: &str, help: &str, value: impl EncodeGaugeValue) -> fmt::Result {
        ConstGauge::new(value).encode(self.0.encode_descriptor(name, help, None, MetricType::Gauge)?)
    }

    pub(super) fn seconds(&mut self, name: &str, help: &str, value: f64) -> fmt::Result {
        ConstGauge::new(value).encode(self.0.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Gauge)?)
    }

    pub(super) fn counters<S: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (S, u64)>,
    ) -> fmt::Result {
        let mut metric = self.0.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    pub(super) fn gauges<S: EncodeLabelSet, N: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (S, N)>,
    ) -> fmt::Result {
        let mut metric = self.0.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
        for (labels, value) in samples {
            ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A metric kept live (e.g. a family of histograms fed per frame).
    pub(super) fn live(&mut self, name: &str, help: &str, unit: Option<Unit>, metric: &impl EncodeMetric) -> fmt::Result {
        metric.encode(self.0.encode_descriptor(name, help, unit.as_ref(), metric.metric_type())?)
    }

    /// A histogram from per-bucket counts: `buckets` are (upper bound, count in that bucket),
    /// the last bound `f64::INFINITY`.
    pub(super) fn histogram(&mut self, name: &str, help: &str, sum: f64, count: u64, buckets: &[(f64, u64)]) -> fmt::Result {
        let mut metric = self.0.encode_descriptor(name, help, None, MetricType::Histogram)?;
        metric.encode_histogram::<NoLabelSet>(sum, count, buckets, None)
    }

    /// `healthy` (0 or 1) and the `condition` state set: the same verdict the watchdog and
    /// `/healthz` act on.
    pub(super) fn health(&mut self, condition: &Condition) -> fmt::Result {
        self.gauge(
            "healthy",
            "1 while the service makes progress or is idle (what feeds the systemd watchdog and /healthz)",
            i64::from(condition.is_healthy()),
        )?;
        let states = CONDITIONS.map(|name| ([("condition", name)], i64::from(name == condition.name())));
        self.gauges("condition", "The service's condition: 1 for the current one", None, states)
    }
}
