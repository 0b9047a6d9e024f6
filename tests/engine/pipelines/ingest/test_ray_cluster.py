"""`kneuron ingest --engine ray --ray-address HOST:PORT` on a simulated two-node cluster
(`ray.cluster_utils.Cluster`: two raylets of one CPU each on this machine): two recorders, one per node, give
the tables of ``--engine local``. Needs no Ray instance of this process (the run joins the cluster by address
and leaves it afterwards)."""
from __future__ import annotations

from pathlib import Path

import pytest

from kneuron.cli.main import main
from tests.engine.pipelines.ingest.test_ray import args, assert_same_tables, model_dir, tables, world  # noqa: F401  (fixtures)
from tests.helpers.cli_runner import run_cli

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a worker node, one CPU each; yields the head's address."""
    assert not ray.is_initialized()
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_two_recorders_on_two_nodes_give_the_local_tables(world, model_dir, two_nodes, tmp_path: Path,  # noqa: F811
                                                           capsys) -> None:
    local = tmp_path / "local"
    main(args(world, model_dir, local))
    wh = tmp_path / "ray"
    code, out, err = run_cli(args(world, model_dir, wh, "--engine", "ray", "--ray-address", two_nodes,
                                  "--workers", "2", "--progress"), capsys)
    assert code == 0, err
    assert "2 recorder(s) x 0.67 CPU" in err  # fractional recorders: each node keeps room for the image tasks
    assert not ray.is_initialized()  # the run joined the cluster by address and left it
    assert_same_tables(wh, local)
    assert tables(wh)["samples"].num_rows >= 4
