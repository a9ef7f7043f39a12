"""From an IR program to a plan: static (or calibrated) bounds, truncation placement
(eager, lazy, optimal), and the plan's protocol costs."""
from .bounds import calibrated_bounds, static_bounds
from .cost import PlanCosts, plan_costs
from .placement import place

__all__ = ["calibrated_bounds", "static_bounds", "place", "plan_costs", "PlanCosts"]
