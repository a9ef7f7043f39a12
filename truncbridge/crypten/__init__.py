"""truncbridge on CrypTen: run a truncation-annotated plan on real secret shares.

    from truncbridge.crypten import import_crypten, PlanRunner
    crypten = import_crypten()          # CrypTen 0.4.1 on recent torch (see compat.py)
    crypten.init()
    runner = PlanRunner(plan)           # a plan from truncbridge.pipeline.build_plan / load_plan
    logits = runner.open_outputs(runner.run(inputs), dst=1)

Modules: ``compat`` (import alias), ``truncation`` (truncation protocols on shares), ``runner``
(the plan as CrypTen computation), ``vanilla`` (the same model with CrypTen's own functions),
``party`` (starting a party under mpirun or from environment variables, timeouts, lost peers).
"""
from .compat import import_crypten
from .runner import PlanRunner
from .vanilla import VanillaRunner

__all__ = ["import_crypten", "PlanRunner", "VanillaRunner"]
