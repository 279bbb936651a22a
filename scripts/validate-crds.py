#!/usr/bin/env python3
"""Validates Prometheus Operator objects (ServiceMonitor, PrometheusRule, ...) offline against
the CRD schemas, strictly: unknown fields are errors (the API server would silently prune
them), as are wrong types and values that break a CRD pattern (durations, enums).

The schemas come from the PyPI package cloudcoil-models-prometheus-operator: pydantic models
generated from the prometheus-operator CRDs (monitoring.coreos.com/v1). kubernetes-validate has
no schemas for CRDs, hence this script. Installed by scripts/install.sh into the project venv.

    python scripts/validate-crds.py FILE...      # exit 0 when every object is valid
"""
import inspect
import sys

import pydantic
import yaml

try:
    from cloudcoil import apimachinery
    from cloudcoil.models.prometheus_operator import v1
except ImportError as e:
    sys.exit(f"validate-crds: {e}: run scripts/install.sh (pip package cloudcoil-models-prometheus-operator)")


def strict(*modules):
    """Forbid unknown fields in every model of `modules`, then rebuild the validators (several
    passes, so that models embedding other models pick up the rebuilt ones)."""
    classes = [
        c
        for m in modules
        for _, c in inspect.getmembers(m, inspect.isclass)
        if issubclass(c, pydantic.BaseModel) and c.__module__ == m.__name__
    ]
    for c in classes:
        c.model_config["extra"] = "forbid"
    for _ in range(6):
        for c in classes:
            c.model_rebuild(force=True)


def main(files):
    strict(apimachinery, v1)
    failed = 0
    for f in files:
        with open(f) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d]
        for d in docs:
            what = f"{f}: {d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
            if d.get("apiVersion") != "monitoring.coreos.com/v1" or not hasattr(v1, str(d.get("kind"))):
                print(f"FAIL {what}: not a monitoring.coreos.com/v1 kind this script knows")
                failed += 1
                continue
            try:
                getattr(v1, d["kind"]).model_validate(d)
                print(f"PASS {what}")
            except pydantic.ValidationError as e:
                print(f"FAIL {what}: {e}")
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
