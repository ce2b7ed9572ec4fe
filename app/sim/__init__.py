"""The simulated provider: a real HTTP server speaking the OpenAI and Anthropic wire formats, with weather.

Public API::

    SimServer(scenario="instant", seed=0)     await start(host, port) / stop(); .port .base_url .openai_base_url
                                              .anthropic_base_url .served (the ledger) set_scenario() reset() state()
    run_simulator(host, port, scenario, seed) serve until cancelled (the `controlroom sim` command)
    SimThread(scenario, seed)                 the same server in a background thread, as a context manager
    load_scenario(name | path | mapping), list_scenarios(), ScenarioError

See server.py for the control endpoints and scenario.py for the scenario file format.
"""

from app.sim.ledger import Ledger, Served
from app.sim.scenario import Scenario, ScenarioError, list_scenarios, load_scenario
from app.sim.server import SimServer, SimThread, run_simulator

__all__ = [
    "Ledger",
    "Scenario",
    "ScenarioError",
    "Served",
    "SimServer",
    "SimThread",
    "list_scenarios",
    "load_scenario",
    "run_simulator",
]
