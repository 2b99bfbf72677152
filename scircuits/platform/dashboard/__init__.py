"""Feature dashboards: a static site per run (index + one page per active feature) and a Neuronpedia export.

    from scircuits.platform.dashboard import build_dashboard
    summary = build_dashboard(run_dir, plugins)           # RUN_DIR/dashboard/index.html, opens from file://

Modules: ``sources`` (the only one that reads the run directory and scircuits' internals), ``scan``
(streaming passes over the store through the SAE), ``schema`` (the typed data written), ``build``
(extraction), ``site`` and ``assets`` (the pages), ``neuronpedia`` (the export), ``matches`` (matched
features in compared runs, from ``scircuits compare`` folders, linked between the runs' sites).
"""

from scircuits.platform.dashboard.build import DASHBOARD_DIR, DashboardSummary, build_dashboard

__all__ = ["DASHBOARD_DIR", "DashboardSummary", "build_dashboard"]
