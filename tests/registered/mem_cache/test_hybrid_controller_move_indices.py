"""Regression guard for upstream #23427 (issue #23429), fixed in 0.5.12.

HybridCacheController.start_writing / start_loading move transfer indices to
the copy engine's device (io_backend "kernel": host indices go to the GPU).
The PoolTransfer objects they are handed may be the ones the radix tree
reads host values back from, so the move must happen on copies. When it was
done in place, a node's host_value became a device tensor and host eviction
crashed in the host pool's free().

The real controller is built without its CUDA-only __init__ (the seam follows
move_hybrid_indices to wherever the release calls it: the hybrid controller's own
start_writing / start_loading, or from 0.5.18 the base controller's through its
transfer engine); the device move is simulated on CPU by pointing the controller
at the "meta" device, so a
moved index tensor is a different tensor on a different device, exactly what
the free() of a host pool cannot take.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

import radix_fixtures as rf  # noqa: E402
import torch  # noqa: E402
from radix_fixtures import EvictParams, PoolName, seam  # noqa: E402
from sglang.test.ci.ci_register import register_cpu_ci  # noqa: E402
from seam.hicache_standins import (  # noqa: E402
    CpuStream,
    OnCopyDevice,
    RecordingHostPool,
    cpu_device_module_patches,
)

register_cpu_ci(est_time=30, suite="stage-a-test-cpu")

MOVED_TO = torch.device("meta")


def _snapshot(transfers):
    return [(t, t.host_indices, t.device_indices) for t in transfers]


class TestHybridControllerMoveIndices(rf.RadixTestCase):
    def setUp(self):
        for patcher in cpu_device_module_patches():
            patcher.start()
            self.addCleanup(patcher.stop)

    def _assert_untouched(self, snapshot):
        for transfer, host, device in snapshot:
            self.assertIs(transfer.host_indices, host, f"{transfer.name} host moved")
            self.assertIs(
                transfer.device_indices, device, f"{transfer.name} device moved"
            )
            if transfer.host_indices is not None:
                self.assertEqual(transfer.host_indices.device.type, "cpu")

    def _hybrid_tree(self):
        h = rf.build_tree(page_size=1, window=2, with_mamba=True)
        rf.attach_hicache(
            h,
            lambda group, policy: seam.bare_hybrid_controller(
                group, policy, h.allocator, device=MOVED_TO, stream=CpuStream()
            ),
            host_pool_cls=RecordingHostPool,
            copy_view=lambda pool: OnCopyDevice(pool, MOVED_TO),
        )
        h.cache.load_back_threshold = 1
        return h

    def test_start_writing_and_loading_use_moved_copies(self):
        h = self._hybrid_tree()
        ctrl = h.controller
        host = h.host
        swa_dev = torch.tensor([5, 6, 7], dtype=torch.int64)
        mamba_dev = torch.tensor([3], dtype=torch.int64)
        swa_xfer = seam.PoolTransfer(
            name=PoolName.SWA,
            host_indices=host.swa.alloc(3),
            device_indices=swa_dev,
        )
        mamba_xfer = seam.PoolTransfer(
            name=PoolName.MAMBA,
            host_indices=host.mamba.alloc(1),
            device_indices=mamba_dev,
        )
        kv_host = host.kv.alloc(3)
        kv_dev = torch.tensor([10, 11, 12], dtype=torch.int64)
        snapshot = _snapshot([swa_xfer, mamba_xfer])

        ctrl.write_queue.append(
            seam.CacheOperation(
                kv_host, kv_dev, 7, pool_transfers=[swa_xfer, mamba_xfer]
            )
        )
        ctrl.start_writing()
        self._assert_untouched(snapshot)
        self.assertEqual(ctrl.write_queue, [])
        self.assertEqual(ctrl.ack_write_queue[-1].node_ids, [7])
        # The copies got moved indices with the same values.
        for pool, xfer in ((host.swa, swa_xfer), (host.mamba, mamba_xfer)):
            (moved_host, moved_dev) = pool.backups[-1]
            self.assertEqual(moved_host.device, MOVED_TO)
            self.assertEqual(moved_host.shape, xfer.host_indices.shape)
            self.assertIs(moved_dev, xfer.device_indices)
        self.assertEqual(host.kv.backups[-1][0].device, MOVED_TO)

        ctrl.load_queue.append(
            seam.CacheOperation(
                kv_host, kv_dev, 8, pool_transfers=[swa_xfer, mamba_xfer]
            )
        )
        producer = ctrl.start_loading()
        self.assertGreaterEqual(producer, 0)
        self._assert_untouched(snapshot)
        self.assertEqual(ctrl.load_queue, [])
        self.assertEqual(ctrl.ack_load_queue[-1].node_ids, [8])
        self.assertEqual(len(host.swa.loads), ctrl.layer_num)
        self.assertTrue(all(l[0].device == MOVED_TO for l in host.mamba.loads))

    def test_tree_host_eviction_frees_original_host_indices(self):
        """Write-through, demote, load back, demote, host-evict: the crash path."""
        h = self._hybrid_tree()
        cache, ctrl, host = h.cache, h.controller, h.host

        # Spy on the transfers the tree hands to the controller.
        handed = {"write": [], "load": []}
        for name in handed:
            real = getattr(ctrl, name)

            def spy(*args, _real=real, _log=handed[name], **kwargs):
                result = _real(*args, **kwargs)
                _log.append(list(kwargs.get("extra_pools") or []))
                return result

            setattr(ctrl, name, spy)

        tokens = list(range(100, 106))
        kv = h.alloc_kv(len(tokens))
        mamba_value = h.alloc_mamba()
        h.insert_finished(tokens, kv, 0, 0, mamba_value)
        h.submit_backups()
        # The request's tokens may be held by one node or a chain of them.
        chain = h.nodes()
        self.assertEqual(sum(len(n.key) for n in chain), len(tokens))

        # Write-through ran start_writing on moved copies.
        self.assertTrue(all(n.backuped for n in chain))
        write_xfers = [x for xfers in handed["write"] for x in xfers]
        self.assertEqual({x.name for x in write_xfers}, {PoolName.SWA, PoolName.MAMBA})
        self.assertEqual(host.swa.backups[-1][0].device, MOVED_TO)
        self.assertEqual(host.mamba.backups[-1][0].device, MOVED_TO)
        # What the tree committed as host values is what the host pools gave out.
        originals = {ct: [] for ct in (rf.FULL, rf.SWA, rf.MAMBA)}
        for node in chain:
            for ct in originals:
                hv = node.component_data[ct].host_value
                if hv is not None:
                    self.assertEqual(hv.device.type, "cpu", f"{ct} host_value left the host")
                    originals[ct].append(hv.clone())
        for ct in originals:
            self.assertTrue(originals[ct], f"no {ct} host copy was kept")
        for x in write_xfers:
            ct = rf.SWA if x.name == PoolName.SWA else rf.MAMBA
            self.assertEqual(x.host_indices.device.type, "cpu")
            self.assertTrue(
                any(torch.equal(x.host_indices, hv) for hv in originals[ct]),
                f"{ct}: the tree kept other slots than the transfer wrote",
            )

        cache.writing_check()
        self.assertEqual(h.locked_nodes(), [])
        cache.evict(EvictParams(num_tokens=len(tokens)))
        self.assertTrue(all(n.evicted and n.backuped for n in chain))

        # Load back: the tree's transfers reference its own host values.
        self.assertTrue(h.load_back(chain[-1]))
        load_xfers = [x for xfers in handed["load"] for x in xfers]
        self.assertTrue(load_xfers, "load back handed no transfers")
        snapshot = _snapshot(load_xfers)
        self.assertGreater(cache.ready_to_load_host_cache(), -1)
        self._assert_untouched(snapshot)
        self.assertTrue(all(l[0].device == MOVED_TO for l in host.swa.loads))
        cache.loading_check()
        self.assertEqual(h.locked_nodes(), [])
        h.assert_healthy()

        # Demote again and evict from host: frees exactly the original slots.
        cache.evict(EvictParams(num_tokens=len(tokens)))
        self.assertTrue(all(n.evicted for n in chain))
        cache.evict_host(len(tokens))
        self.assertEqual(h.nodes(), [])
        pools = ((rf.FULL, host.kv), (rf.SWA, host.swa), (rf.MAMBA, host.mamba))
        for ct, pool in pools:
            self.assertTrue(all(f.device.type == "cpu" for f in pool.freed))
            freed = torch.cat(pool.freed).sort().values
            kept = torch.cat(originals[ct]).sort().values
            self.assertTrue(torch.equal(freed, kept), f"{ct}: other slots freed")
            self.assertEqual(pool.available_size(), pool.size)
        h.assert_healthy()


if __name__ == "__main__":
    unittest.main()
