"""``python -m safe_rlhf.data describe SPEC [--kind K] [--split S] [--on-error skip] [--json]``; see describe.py."""

from safe_rlhf.data.describe import main

if __name__ == "__main__":
    raise SystemExit(main())
