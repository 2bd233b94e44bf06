# The two quick-start commands: `make demo` (the main job) and `make test` (every test).
# Both install missing Debian packages (scripts/setup.sh) and build into build/.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# Flags of build/ only (not of the sanitizer builds, which set their own optimization).
MAIN_FLAGS ?=
ifeq ($(CI),true)
# CI: warnings are errors; the benchmarks (bench/, no tests) are left out to fit CI's 30 minutes,
# and build/ is compiled at -O2 without debug info (RelWithDebInfo's -g nearly doubled the
# compile time of the largest files: save_pipeline.cc 40 s against 21 s), its tests' own code
# at -O0 (CKPT_TEST_OPT, tests/CMakeLists.txt).
CMAKE_FLAGS += -DCKPT_WERROR=ON -DCKPT_BENCH=OFF
MAIN_FLAGS += -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG" -DCKPT_TEST_OPT=-O0
endif

.PHONY: all setup build demo test install test-install test-asan test-tsan test-fuzz test-powerloss powerloss-explore powerloss-explore-all clean

all: build

setup:
	@bash scripts/setup.sh

$(BUILD)/CMakeCache.txt: | setup
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS) $(MAIN_FLAGS) >/dev/null

build: setup $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

demo: build
	$(BUILD)/examples/train_loop --dir ./checkpoints

# Every test: the ctest suites (the label `powerloss`, the explorer's fsync-drop proof,
# included), then the power-loss crash-state explorer.
test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS) --timeout 600
	$(MAKE) --no-print-directory powerloss-explore

# The crash-state explorer (tests/powerloss/, docs/design.md "Power loss"): first the proof that
# it fails when any one fsync is dropped, then the real run, whose last line is
# `powerloss: S states explored, V violations`. Without a sanitizer (`make test` runs it too).
test-powerloss: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS) --timeout 600 -L powerloss
	$(MAKE) --no-print-directory powerloss-explore

powerloss-explore:
	rm -rf $(BUILD)/powerloss-work
	$(BUILD)/tests/powerloss --work $(BUILD)/powerloss-work

# Every scenario, the extended ones too (a sharded overwrite with retention, overlapped
# incremental saves): about 30 s more than powerloss-explore, so not part of `make test`.
powerloss-explore-all: build
	rm -rf $(BUILD)/powerloss-work
	$(BUILD)/tests/powerloss --all --work $(BUILD)/powerloss-work

# The C++ libraries, headers, CMake package (find_package(ckpt CONFIG) -> ckpt::ckpt), the `ckpt`
# tool and the Python package, under PREFIX.
PREFIX ?= /usr/local
install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

# Installs into a temporary prefix and builds a consumer project against it (run by .ci/run).
test-install: build
	bash scripts/test_install.sh $(BUILD)

# Sanitizer builds (run by .ci/run), at -O1 without debug info (reports name functions from the
# symbol table), the tests' own code at -O0, and without the benchmarks or demo, to keep CI
# within its time budget (with the logging front of io/log.h as well, the ASan build went from
# 713 s to 424 s on two cores).
SAN_FLAGS = -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1" -DCKPT_BENCH=OFF -DCKPT_TEST_OPT=-O0
test-asan: setup
	cmake -S . -B build-asan -DCKPT_SANITIZE=address $(SAN_FLAGS) $(CMAKE_FLAGS) >/dev/null
	cmake --build build-asan -j$(JOBS)
	cd build-asan && ctest --output-on-failure -j$(JOBS) --timeout 900 -LE powerloss

# ThreadSanitizer: the suites labelled `concurrency` (tests/CMakeLists.txt says which and why).
test-tsan: setup
	cmake -S . -B build-tsan -DCKPT_SANITIZE=thread $(SAN_FLAGS) $(CMAKE_FLAGS) >/dev/null
	cmake --build build-tsan -j$(JOBS) --target tsan_tests
	cd build-tsan && TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp" \
	  ctest --output-on-failure -j$(JOBS) --timeout 900 -L concurrency -LE powerloss

# The libFuzzer target over the manifest reader and the restore path (tests/fuzz), built with clang
# into build-fuzz/ and run for FUZZ_SECONDS on a scratch copy of the seed corpus, so the repository
# is left alone. Any finding fails the target; the input lands in build-fuzz/findings/.
FUZZ_SECONDS ?= 60
FUZZ_FLAGS = -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 -max_len=65536
test-fuzz:
	@bash scripts/setup.sh --fuzz
	CC=clang CXX=clang++ cmake -S tests/fuzz -B build-fuzz >/dev/null
	cmake --build build-fuzz -j$(JOBS)
	rm -rf build-fuzz/corpus build-fuzz/findings
	mkdir -p build-fuzz/corpus build-fuzz/findings
	cp tests/fuzz/corpus/* build-fuzz/corpus/
	@echo "fuzz: manifest_fuzz for $(FUZZ_SECONDS) s, log in build-fuzz/fuzz.log"
	@UBSAN_OPTIONS=print_stacktrace=1 build-fuzz/manifest_fuzz $(FUZZ_FLAGS) \
	    -artifact_prefix=build-fuzz/findings/ build-fuzz/corpus >build-fuzz/fuzz.log 2>&1; \
	  rc=$$?; grep -E '^(INFO: Seed|#[0-9]+.*DONE|Done [0-9]+ runs)' build-fuzz/fuzz.log; \
	  if [ $$rc -ne 0 ]; then \
	    tail -n 80 build-fuzz/fuzz.log; \
	    echo "fuzz: FAILED (exit $$rc); reproduce with build-fuzz/manifest_fuzz" \
	      build-fuzz/findings/*; \
	    exit 1; \
	  fi

clean:
	rm -rf build build-asan build-tsan build-fuzz
