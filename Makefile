# Set-up and the two jobs the README leads with. Each target installs what it needs first.
#   make demo   compile GoogLeNet, print its table, draw it, train mini_googlenet on digits
#   make test   the test suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip
OUT ?= out
STAMP = .install.stamp

.PHONY: demo test lint bench graphviz install

install: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PIP) install --quiet --constraint constraints/cpu.txt -e ".[train,onnx,deploy,lsp,plot,dev]"
	touch $(STAMP)

graphviz:
	@command -v dot >/dev/null || { apt-get update -qq && apt-get install -y -qq graphviz >/dev/null; }

demo: install graphviz
	mkdir -p $(OUT)
	incdsl compile specs/googlenet.inc -o $(OUT)/googlenet.py
	incdsl stats specs/googlenet.inc --reference tests/fixtures/googlenet_table1.tsv
	incdsl check specs/googlenet.inc
	incdsl draw specs/googlenet.inc -o $(OUT)/googlenet.svg
	incdsl draw specs/googlenet.inc -o $(OUT)/googlenet.blocks.svg --level block
	incdsl train mini_googlenet --data digits --out $(OUT)/runs/digits

test: install graphviz
	$(PYTHON) -m pytest

lint: install
	ruff check . && ruff format --check .

# speed.py prints the README's "Performance" figures, the trainer against a bare loop included (26
# minutes on 2 cores; make bench BENCH_ARGS="--quick --no-compile" for a few); bench_engines.py the
# engines' table (ONNX Runtime and OpenVINO beside the builds; --quick passed on).
BENCH_ARGS ?=

bench: install
	$(PYTHON) benchmarks/bench_startup.py
	$(PYTHON) benchmarks/speed.py $(BENCH_ARGS)
	$(PYTHON) benchmarks/bench_engines.py $(filter --quick,$(BENCH_ARGS))
