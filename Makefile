# make demo: set up, build, and run the edge pipeline (plus a loopback worker) on the embedded default.
# make test: set up, build, and run every test.
# make install [DESTDIR=...] [PREFIX=/usr/local]: the services (systemd/README.md); make deb: the same as a .deb.
CARGO ?= cargo
ASSETS ?= $(or $(EDGESEG_ASSETS),../shared/assets)

# Where `make install` puts things. DESTDIR is prepended to every path (staging, packaging);
# the other variables are the paths on the target machine.
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
STATEDIR ?= /var/lib/edgeseg
BINDIR = $(PREFIX)/bin
# The binary looks for libonnxruntime.so beside itself and in ../lib/edgeseg.
LIBDIR = $(PREFIX)/lib/edgeseg
DATADIR = $(PREFIX)/share/edgeseg
DOCDIR = $(PREFIX)/share/doc/edgeseg
UNITDIR ?= $(PREFIX)/lib/systemd/system
CONFDIR = $(SYSCONFDIR)/edgeseg
# The shipped configs with their ../ paths pointed at the installed files and the state
# directory; the edge reads a camera (v4l2.pipeline) instead of the demo video.
CONFIG_PATHS = -e 's|"\.\./pipelines/|"$(DATADIR)/pipelines/|' -e 's|\.\./models/|$(DATADIR)/models/|g' \
	-e 's|"\.\./out"|"$(STATEDIR)/out"|' -e 's|"\.\./certs/|"$(STATEDIR)/certs/|'
EDGE_CAMERA = -e 's|pipelines/file.pipeline"|pipelines/v4l2.pipeline"|' \
	-e 's|^location = .*|device = "/dev/video0"\nwidth = 640\nheight = 480\nframerate = "15/1"|'

.PHONY: setup build demo test bench bench-pipeline bench-transport bench-link fuzz clean install uninstall check-units deb

setup:
	scripts/setup

build: setup
	$(CARGO) build --release --locked

demo: build
	scripts/demo

test: setup
	$(CARGO) build --release --locked
	$(CARGO) test --release --locked

bench: bench-pipeline bench-transport

# The edge pipeline with the small network (the edge's own) on the real video, then with the
# large one on the edge (what a frame costs when it cannot go remote) on the shorter fixture
# video: the real networks and videos/vtest.avi when the assets are there, the fixture networks
# and video otherwise.
bench-pipeline: build
	@if [ -f "$(ASSETS)/models/deeplabv3_mnv2_voc_513_fp32.onnx" ] && [ -f "$(ASSETS)/videos/vtest.avi" ]; then \
	   small="deeplab-small:$(ASSETS)/videos/vtest.avi"; large="deeplab-large-fp32:fixtures/bench.mp4"; \
	 else small=small:fixtures/bench.mp4; large=large:fixtures/bench.mp4; echo "bench-pipeline: no real networks in $(ASSETS): fixture networks"; fi; \
	for run in $$small $$large; do \
	  target/release/edgeseg bench pipeline --config config/edge.toml --input $${run#*:} --out out/bench \
	    --set model.manifest=../models/$${run%%:*}.toml || exit 1; \
	done

bench-transport: build
	target/release/edgeseg bench transport

# Across an emulated impaired link between two network namespaces (needs root; README "Impaired links").
bench-link: build
	target/release/edgeseg bench transport --link delay=10ms,loss=1%,rate=20mbit

fuzz:
	mkdir -p fuzz/corpus/decode
	$(CARGO) +nightly fuzz run decode fuzz/corpus/decode fuzz/seeds -- -max_total_time=120

# Installs the binary, ONNX Runtime, the units, pipelines, model manifests (and the fixture
# networks when made), the docs, and the configs unless they exist (local edits are kept).
install: target/release/edgeseg
	install -D -m 0755 target/release/edgeseg $(DESTDIR)$(BINDIR)/edgeseg
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(DATADIR)/pipelines $(DESTDIR)$(DATADIR)/models $(DESTDIR)$(UNITDIR) $(DESTDIR)$(CONFDIR)
	install -m 0644 vendor/onnxruntime/libonnxruntime*.so* $(DESTDIR)$(LIBDIR)/
	install -m 0644 pipelines/*.pipeline $(DESTDIR)$(DATADIR)/pipelines/
	install -m 0644 models/*.toml $(wildcard models/*.onnx) $(DESTDIR)$(DATADIR)/models/
	# The decision network's base and the rest of the small network (scripts/split_small.py),
	# where the real small network was there to split: what [decision] in edge.toml names.
	$(if $(wildcard models/derived/*.onnx),install -D -m 0644 -t $(DESTDIR)$(DATADIR)/models/derived $(wildcard models/derived/*.onnx))
	for unit in edgeseg-edge edgeseg-worker; do \
	  sed -e 's|/usr/local/|$(PREFIX)/|g' -e 's|/etc/edgeseg|$(CONFDIR)|g' -e 's|/var/lib/edgeseg|$(STATEDIR)|g' \
	    systemd/$$unit.service > $(DESTDIR)$(UNITDIR)/$$unit.service; \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$unit.service; \
	done
	install -D -m 0644 systemd/README.md $(DESTDIR)$(DOCDIR)/systemd-README.md
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	[ -e $(DESTDIR)$(CONFDIR)/edge.toml ] || sed $(CONFIG_PATHS) $(EDGE_CAMERA) config/edge.toml > $(DESTDIR)$(CONFDIR)/edge.toml
	[ -e $(DESTDIR)$(CONFDIR)/worker.toml ] || sed $(CONFIG_PATHS) config/worker.toml > $(DESTDIR)$(CONFDIR)/worker.toml
	chmod 0644 $(DESTDIR)$(CONFDIR)/edge.toml $(DESTDIR)$(CONFDIR)/worker.toml

target/release/edgeseg:
	$(CARGO) build --release --locked

# What install puts in place, as target/debian/edgeseg_<version>_<arch>.deb (systemd/README.md).
deb: target/release/edgeseg
	scripts/deb

# Everything install put there except the configs and the state directory.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/edgeseg $(DESTDIR)$(UNITDIR)/edgeseg-edge.service $(DESTDIR)$(UNITDIR)/edgeseg-worker.service
	rm -rf $(DESTDIR)$(LIBDIR) $(DESTDIR)$(DATADIR) $(DESTDIR)$(DOCDIR)

# The units as installed, checked offline: systemd-analyze verify (on an install into
# target/stage, so ExecStart exists) and the sandbox's exposure score (systemd/README.md).
STAGE = $(CURDIR)/target/stage
check-units: target/release/edgeseg
	rm -rf $(STAGE)
	$(MAKE) --no-print-directory install PREFIX=$(STAGE)/usr SYSCONFDIR=$(STAGE)/etc STATEDIR=$(STAGE)/var/lib/edgeseg >/dev/null
	for unit in edgeseg-edge edgeseg-worker; do \
	  systemd-analyze verify $(STAGE)/usr/lib/systemd/system/$$unit.service || exit 1; \
	  systemd-analyze security --offline=yes $(STAGE)/usr/lib/systemd/system/$$unit.service | tail -n 1; \
	done

clean:
	$(CARGO) clean
	rm -rf out
