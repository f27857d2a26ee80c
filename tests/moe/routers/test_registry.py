"""The registry finds each router's Config without importing its gate, and the two agree."""

import subprocess
import sys

import pytest

from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.routers import available_routers, router_class, router_config_class


@pytest.mark.parametrize("name", available_routers())
def test_the_gate_names_the_registered_config(name):
    config_class = router_config_class(name)
    assert router_class(name).Config is config_class
    assert config_class.__module__.endswith(f".{name}_config")


def test_configs_are_read_without_torch():
    code = (
        "import sys; from megatron_evomoe.moe.routers import available_routers, router_config_class\n"
        "configs = [router_config_class(n)() for n in available_routers()]\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_an_unknown_router_is_a_flag_error():
    with pytest.raises(InputError, match="--moe-router-type 'nope' is not available"):
        router_config_class("nope")
