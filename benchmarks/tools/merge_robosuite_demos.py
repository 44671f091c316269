"""Recompute the stored observations of the can/square files from their states with the current
adapter (the relative object features were fixed after they were recorded), merge the seeds 0-159
run with the seeds 1000-1049 run into runs/demos/<task>.hdf5, and label every demo with its seed and
strategy (per-demo attrs). For lift only the labels are added."""
import json, os, sys
import h5py
from dp_gym.data.robomimic import replay_states_to_hdf5, merge_robomimic_hdf5, list_demos

def labels(path):
    with h5py.File(path, "r") as f:
        return json.loads(f["data"].attrs["seeds"]), json.loads(f["data"].attrs["strategies"])

def put_labels(path, seeds, strategies):
    with h5py.File(path, "r+") as f:
        names = list_demos(path)
        assert len(names) == len(seeds) == len(strategies), (len(names), len(seeds))
        for n, s, st in zip(names, seeds, strategies):
            f["data"][n].attrs["seed"] = s
            f["data"][n].attrs["strategy"] = st
        f["data"].attrs["seeds"] = json.dumps(seeds)
        f["data"].attrs["strategies"] = json.dumps(strategies)

for t in sys.argv[1:]:
    if t == "lift":
        put_labels("runs/demos/lift.hdf5", *labels("runs/demos/lift.hdf5"))
        print("lift labelled"); continue
    parts, seeds, strategies = [], [], []
    extra = [f"runs/demos/{t}_seeds160-179.hdf5"] if os.path.exists(f"runs/demos/{t}_seeds160-179.hdf5") else []
    for src in [f"runs/demos/{t}_seeds0-159.hdf5", *extra, f"runs/demos/{t}_eval50.hdf5"]:
        s, st = labels(src); seeds += s; strategies += st
        dst = src.replace(".hdf5", "_stateobs.hdf5")
        replay_states_to_hdf5(src, dst, cameras=(), progress=False)
        parts.append(dst)
    n = merge_robomimic_hdf5(parts, f"runs/demos/{t}.hdf5")
    put_labels(f"runs/demos/{t}.hdf5", seeds, strategies)
    for p in parts:
        os.remove(p)
    print(t, "merged demos:", n)
