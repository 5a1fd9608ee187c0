//! The Debian package (`scripts/deb`): built from `make install`, unpacked into a temporary
//! root, and run from there: the packaged binary must find the packaged ONNX Runtime beside it
//! and segment a test pattern with the packaged fixture network and pipeline.

use std::path::Path;
use std::process::Command;

use crate::common;

fn deb_field(deb: &Path, field: &str) -> String {
    let out = Command::new("dpkg-deb").arg("-f").arg(deb).arg(field).output().expect("running dpkg-deb -f");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_debian_package_installs_a_binary_that_runs_on_its_own_files() {
    let _machine = common::shared_machine();
    for tool in ["dpkg-deb", "dpkg-shlibdeps", "strip"] {
        if Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map_or(true, |o| !o.status.success()) {
            eprintln!("skipped: {tool} is not installed (scripts/setup installs dpkg-dev)");
            return;
        }
    }
    common::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let built = Command::new(common::root().join("scripts/deb")).arg(dir.path()).output().expect("running scripts/deb");
    assert!(built.status.success(), "scripts/deb failed:\n{}", String::from_utf8_lossy(&built.stderr));
    let deb = std::path::PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
    assert!(deb.is_file(), "scripts/deb printed {}", deb.display());

    let depends = deb_field(&deb, "Depends");
    for package in ["libgstreamer1.0-0", "libopencv-core406", "gstreamer1.0-plugins-good"] {
        assert!(depends.contains(package), "Depends lacks {package}: {depends}");
    }
    let root = dir.path().join("root");
    let unpacked = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root).status().expect("running dpkg-deb -x");
    assert!(unpacked.success());
    let control = Command::new("dpkg-deb").arg("-e").arg(&deb).arg(dir.path().join("DEBIAN")).status().expect("running dpkg-deb -e");
    assert!(control.success());
    let conffiles = std::fs::read_to_string(dir.path().join("DEBIAN/conffiles")).unwrap();
    assert_eq!(conffiles.lines().collect::<std::collections::BTreeSet<_>>(), ["/etc/edgeseg/edge.toml", "/etc/edgeseg/worker.toml"].into());
    for unit in ["edgeseg-edge", "edgeseg-worker"] {
        let text = std::fs::read_to_string(root.join(format!("lib/systemd/system/{unit}.service"))).unwrap();
        assert!(text.contains("ExecStart=/usr/bin/edgeseg "), "{unit}: {text}");
    }
    // The decision network's base and rest that [decision] names ship with the package where the
    // checkout has them (split from the real small network).
    let edge_toml = std::fs::read_to_string(root.join("etc/edgeseg/edge.toml")).unwrap();
    for (key, name) in [("encoder", "small_stem.onnx"), ("head", "small_trunk.onnx")] {
        let line = format!("{key} = \"/usr/share/edgeseg/models/derived/{name}\"");
        assert!(edge_toml.contains(&line), "edge.toml lacks {line}");
        if Path::new("models/derived").join(name).is_file() {
            assert!(root.join("usr/share/edgeseg/models/derived").join(name).is_file(), "{name} not packaged");
        }
    }

    // The packaged binary, its packaged ONNX Runtime (no ORT_DYLIB_PATH), network and pipeline.
    let share = root.join("usr/share/edgeseg");
    let out = dir.path().join("out");
    let run = Command::new(root.join("usr/bin/edgeseg"))
        .env_remove("ORT_DYLIB_PATH")
        .arg("run")
        .arg("--config")
        .arg(root.join("etc/edgeseg/edge.toml"))
        .args(["--set", &format!("ingest.pipeline={}", share.join("pipelines/testsrc.pipeline").display())])
        .args(["--set", "ingest.params.pattern=smpte", "--set", "ingest.params.width=160", "--set", "ingest.params.height=120"])
        .args(["--set", "ingest.params.framerate=\"30/1\"", "--set", "ingest.params.num_buffers=5", "--set", "ingest.live=\"replay\""])
        .args(["--set", &format!("model.manifest={}", share.join("models/small.toml").display())])
        .args(["--set", &format!("output.dir={}", out.display())])
        .output()
        .expect("running the packaged edgeseg");
    assert!(run.status.success(), "the packaged binary failed:\n{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(common::records(&out).len(), 5, "{}", String::from_utf8_lossy(&run.stderr));
}
