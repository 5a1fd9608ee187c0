# make demo: set up, build, and run the edge pipeline (plus a loopback worker) on the embedded default.
# make test: set up, build, and run every test.
CARGO ?= cargo
ASSETS ?= $(or $(EDGESEG_ASSETS),../shared/assets)

.PHONY: setup build demo test bench bench-pipeline bench-transport bench-link fuzz clean

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

# The edge pipeline with the small network (the edge's own), then with the large one on the edge
# (what a frame costs when it cannot go remote): the real networks when the assets are there,
# the fixture networks otherwise.
bench-pipeline: build
	@if [ -f "$(ASSETS)/models/deeplabv3_mnv2_voc_513_fp32.onnx" ]; then small=deeplab-small; large=deeplab-large-fp32; \
	 else small=small; large=large; echo "bench-pipeline: no real networks in $(ASSETS): fixture networks"; fi; \
	for model in $$small $$large; do \
	  target/release/edgeseg bench pipeline --config config/edge.toml --input fixtures/bench.mp4 --out out/bench \
	    --set model.manifest=../models/$$model.toml || exit 1; \
	done

bench-transport: build
	target/release/edgeseg bench transport

# Across an emulated impaired link between two network namespaces (needs root; README "Impaired links").
bench-link: build
	target/release/edgeseg bench transport --link delay=10ms,loss=1%,rate=20mbit

fuzz:
	mkdir -p fuzz/corpus/decode
	$(CARGO) +nightly fuzz run decode fuzz/corpus/decode fuzz/seeds -- -max_total_time=120

clean:
	$(CARGO) clean
	rm -rf out
