"""Multi-host settings and slices (ugcn.parallel.distributed)."""
import pytest

from ugcn.parallel import distributed_settings, initialize_distributed, process_slice


def test_distributed_settings_from_environment():
    explicit = {"JAX_COORDINATOR_ADDRESS": "node0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    s = distributed_settings(explicit)
    assert (s.mode, s.coordinator_address, s.num_processes, s.process_id) == ("explicit", "node0:1234", 4, 2)
    assert distributed_settings({}).mode == "single"
    assert distributed_settings({**explicit, "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}).mode == "single"
    assert distributed_settings({"SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"}).mode == "cluster"
    assert distributed_settings({"SLURM_NTASKS": "1"}).mode == "single"
    assert distributed_settings({"OMPI_COMM_WORLD_SIZE": "2"}).mode == "cluster"
    for bad, match in (({"JAX_COORDINATOR_ADDRESS": "node0:1234"}, "missing"),
                       ({**explicit, "JAX_PROCESS_ID": "4"}, "must lie"),
                       ({**explicit, "JAX_NUM_PROCESSES": "four"}, "integer"),
                       ({**explicit, "JAX_COORDINATOR_ADDRESS": "node0"}, "host:port")):
        with pytest.raises(ValueError, match=match):
            distributed_settings(bad)
    assert initialize_distributed({}).mode == "single"  # nothing to do, nothing done


def test_process_slice_partitions_the_sorted_inputs():
    items = [f"case{i:02d}" for i in range(11)][::-1]
    parts = [process_slice(items, index=i, count=3) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(items)  # every item once
    assert parts[0] == ["case00", "case03", "case06", "case09"]  # independent of the listing order
    assert process_slice(items) == sorted(items)  # one process: everything
    with pytest.raises(ValueError):
        process_slice(items, index=3, count=3)
