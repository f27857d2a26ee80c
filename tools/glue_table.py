"""Print the EvoMoE paper's Table II (GLUE dev scores x 100 per task, and their average) from the
results files of several fine-tuning runs (``finetune_glue.py --results-json``)::

    python tools/glue_table.py results/*.json
    python tools/glue_table.py results/*.json --tasks MNLI RTE

One row per model (the runs' ``model`` field, see --model-name), the task columns in the paper's
order (MNLI QNLI QQP RTE SST-2 MRPC CoLA STS-B), each task's primary metric (accuracy; CoLA: MCC;
STS-B: Pearson). The logic is in megatron_evomoe/data/glue/results.py.
"""

import argparse
import sys

from megatron_evomoe.data.glue.results import format_table, read_results
from megatron_evomoe.data.glue.tasks import TABLE_ORDER
from megatron_evomoe.errors import InputError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results JSON files")
    parser.add_argument("--tasks", nargs="+", choices=TABLE_ORDER, default=list(TABLE_ORDER), help="columns")
    args = parser.parse_args(argv)
    try:
        records = [read_results(path) for path in args.results]
    except InputError as exc:
        print(f"glue_table.py: error: {exc}", file=sys.stderr)
        return 1
    print(format_table(records, args.tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
