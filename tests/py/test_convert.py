#!/usr/bin/python3
"""kinfer-convert: both array layouts, the transposition of PyTorch weights,
activations, and refusals -- checked by decoding the written file with
msgpack here (per docs/protocol.md, "Model file") and, when the build has
it, with `kinfer model inspect`.

    KINFER_BIN=build /usr/bin/python3 tests/py/test_convert.py
"""

import os
import subprocess
import sys
import tempfile
import unittest

import msgpack
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, os.environ.get("KINFER_BIN", "build"))
CONVERT = os.path.join(REPO, "producer-tool", "kinfer-convert")


def run(*args):
    p = subprocess.run([sys.executable, CONVERT] + list(args), capture_output=True, text=True)
    return p.returncode, p.stderr


def load(path):
    with open(path, "rb") as f:
        m = msgpack.unpackb(f.read(), raw=False)
    layers = []
    for layer in m["layers"]:
        b = np.frombuffer(layer["b"], dtype="<f4")
        W = np.frombuffer(layer["W"], dtype="<f4").reshape(-1, len(b))
        layers.append((W, b, layer["act"]))
    return m, layers


def forward(layers, x):
    for W, b, act in layers:
        x = x @ W.astype(np.float64) + b
        if act == "relu":
            x = np.maximum(x, 0)
        elif act == "tanh":
            x = np.tanh(x)
    return x


class ConvertTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name
        rng = np.random.default_rng(3)
        self.sd = {
            "net.0.weight": rng.standard_normal((6, 5)).astype(np.float32),
            "net.0.bias": rng.standard_normal(6).astype(np.float32),
            "net.2.weight": rng.standard_normal((3, 6)).astype(np.float32),
            "net.2.bias": rng.standard_normal(3).astype(np.float32),
        }

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.d, name)

    def test_torch_state_dict_is_transposed(self):
        np.savez(self.path("sd.npz"), **self.sd)
        rc, err = run(self.path("sd.npz"), "-o", self.path("net.kmodel"))
        self.assertEqual(rc, 0, err)
        m, layers = load(self.path("net.kmodel"))
        self.assertEqual((m["format"], m["v"], m["kind"]), ("kinfer-model", 1, "mlp"))
        self.assertEqual(m["name"], "net")  # from the output file's name
        self.assertEqual((m["input_dim"], m["output_dim"]), (5, 3))
        np.testing.assert_array_equal(layers[0][0], self.sd["net.0.weight"].T)
        np.testing.assert_array_equal(layers[1][0], self.sd["net.2.weight"].T)
        np.testing.assert_array_equal(layers[1][1], self.sd["net.2.bias"])
        self.assertEqual([a for _, _, a in layers], ["relu", "identity"])
        # the same network, computed from the state_dict as PyTorch would
        x = np.random.default_rng(4).standard_normal((7, 5))
        want = np.maximum(x @ self.sd["net.0.weight"].T.astype(np.float64)
                          + self.sd["net.0.bias"], 0) @ \
            self.sd["net.2.weight"].T.astype(np.float64) + self.sd["net.2.bias"]
        np.testing.assert_allclose(forward(layers, x), want, rtol=1e-12)

    def test_kinfer_layout_and_activations(self):
        W0, b0 = self.sd["net.0.weight"].T, self.sd["net.0.bias"]
        W1, b1 = self.sd["net.2.weight"].T, self.sd["net.2.bias"]
        # numbered past 9: W10 comes after W9, not after W1
        arrays = {"W%d" % i: np.eye(5, dtype=np.float32) for i in range(11)}
        arrays.update({"b%d" % i: np.full(5, i, dtype=np.float32) for i in range(11)})
        np.savez(self.path("deep.npz"), **arrays)
        rc, err = run(self.path("deep.npz"), "--name", "deep", "-o", self.path("d.kmodel"))
        self.assertEqual(rc, 0, err)
        _, layers = load(self.path("d.kmodel"))
        self.assertEqual([int(b[0]) for _, b, _ in layers], list(range(11)))

        np.savez(self.path("k.npz"), W0=W0, b0=b0, W1=W1, b1=b1)
        rc, err = run(self.path("k.npz"), "--name", "k2", "--act", "tanh,softmax",
                      "-o", self.path("k.kmodel"))
        self.assertEqual(rc, 0, err)
        m, layers = load(self.path("k.kmodel"))
        self.assertEqual(m["name"], "k2")
        np.testing.assert_array_equal(layers[0][0], W0)
        self.assertEqual([a for _, _, a in layers], ["tanh", "softmax"])
        inspect = os.path.join(BIN, "kinfer")
        if os.path.exists(inspect):
            p = subprocess.run([inspect, "model", "inspect", self.path("k.kmodel")],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn('"input_dim":5', p.stdout)

    def test_missing_bias_is_zero_and_order(self):
        sd = dict(self.sd)
        del sd["net.2.bias"]
        np.savez(self.path("nb.npz"), **sd)
        rc, err = run(self.path("nb.npz"), "-o", self.path("nb.kmodel"))
        self.assertEqual(rc, 0, err)
        self.assertIn("zero bias", err)
        _, layers = load(self.path("nb.kmodel"))
        np.testing.assert_array_equal(layers[1][1], np.zeros(3))
        # --order: the forward order when the archive's is not
        np.savez(self.path("rev.npz"), **{k: self.sd[k] for k in reversed(list(self.sd))})
        rc, err = run(self.path("rev.npz"), "-o", self.path("rev.kmodel"))
        self.assertEqual(rc, 1)
        self.assertIn("takes 5 inputs, but layer 0 gives 3", err)
        rc, err = run(self.path("rev.npz"), "--order", "net.0,net.2", "-o",
                      self.path("rev.kmodel"))
        self.assertEqual(rc, 0, err)

    def test_other_libraries_activation_names(self):
        """scikit-learn's 'logistic' is the sigmoid; PyTorch's module names are
        capitalised: both are written as kinfer's names, and the summary line
        says '1 layer', not '1 layers'."""
        np.savez(self.path("a.npz"), W0=np.ones((2, 3), np.float32), W1=np.ones((3, 2), np.float32))
        out = self.path("a.kmodel")
        rc, err = run(self.path("a.npz"), "-o", out, "--act", "logistic,ReLU")
        self.assertEqual(rc, 0, err)
        m, layers = load(out)
        self.assertEqual([l[2] for l in layers], ["sigmoid", "relu"])
        np.savez(self.path("one.npz"), W0=np.ones((2, 3), np.float32))
        rc, err = run(self.path("one.npz"), "-o", self.path("one.kmodel"))
        self.assertEqual(rc, 0, err)
        self.assertIn(", 1 layer, 2 -> 3,", err)

    def test_refusals_write_nothing(self):
        cases = [
            ({"W0": np.array([[1.0, np.nan]]), "b0": np.zeros(2)}, [], "'W0'[0, 1] is NaN"),
            ({"W0": np.array([[1e39]]), "b0": np.zeros(1)}, [], "beyond float32"),
            ({"W0": np.ones((2, 3)), "b0": np.zeros(4)}, [], "'b0' has shape [4], layer 0 needs [3]"),
            ({"W0": np.ones((2, 3)), "W2": np.ones((3, 1))}, [], "numbered 0..1 without gaps"),
            ({"W0": np.ones((2, 3)), "x": np.ones(1)}, [], "unexpected arrays for the W0/b0 layout"),
            ({"fc.weight": np.ones((2, 3)), "bn.running_mean": np.ones(2)}, [],
             "'bn.running_mean' is neither"),
            ({"W0": np.ones((2, 3))}, ["--act", "gelu"], "unknown activation 'gelu'"),
            ({"W0": np.ones((2, 3))}, ["--act", "relu,relu"], "2 activations for 1 layer"),
            # scikit-learn's coef_ is [out, in]: the bias then fits the wrong side
            ({"W0": np.ones((3, 2)), "b0": np.zeros(3)}, [],
             "or is 'W0' (3x2) transposed? kinfer wants [in, out]"),
            ({"W0": np.ones((4, 3)), "W1": np.ones((2, 3))}, [],
             "layer 1 ('W1', 2x3) takes 2 inputs, but layer 0 gives 3: transposed?"),
            ({"W0": np.ones((2, 3))}, ["--name", "no spaces"], "model name 'no spaces'"),
            ({"W0": np.ones(3)}, [], "'W0' has shape [3], expected [in, out]"),
        ]
        for arrays, extra, want in cases:
            with self.subTest(want=want):
                np.savez(self.path("bad.npz"), **arrays)
                out = self.path("bad.kmodel")
                rc, err = run(self.path("bad.npz"), "-o", out, *extra)
                self.assertEqual(rc, 1, err)
                self.assertIn(want, err)
                self.assertFalse(os.path.exists(out))
        rc, err = run(self.path("nothing.npz"))
        self.assertEqual(rc, 1)
        self.assertIn("cannot read as .npz", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
