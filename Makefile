# The two quick-start commands: `make demo` (the main job) and `make test` (every test).
# Both install missing Debian packages (scripts/setup.sh) and build into build/.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
ifeq ($(CI),true)
CMAKE_FLAGS += -DCKPT_WERROR=ON
endif

.PHONY: all setup build demo test test-asan test-tsan clean

all: build

setup:
	@bash scripts/setup.sh

$(BUILD)/CMakeCache.txt: | setup
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null

build: setup $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

demo: build
	$(BUILD)/examples/train_loop --dir ./checkpoints

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS) --timeout 600

# Sanitizer builds of the whole suite (run by .ci/run), at -O1 without full debug info to keep
# CI within its time budget.
SAN_FLAGS = -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1"
test-asan: setup
	cmake -S . -B build-asan -DCKPT_SANITIZE=address $(SAN_FLAGS) $(CMAKE_FLAGS) >/dev/null
	cmake --build build-asan -j$(JOBS)
	cd build-asan && ctest --output-on-failure -j$(JOBS) --timeout 900

test-tsan: setup
	cmake -S . -B build-tsan -DCKPT_SANITIZE=thread $(SAN_FLAGS) $(CMAKE_FLAGS) >/dev/null
	cmake --build build-tsan -j$(JOBS)
	cd build-tsan && ctest --output-on-failure -j$(JOBS) --timeout 900

clean:
	rm -rf build build-asan build-tsan
