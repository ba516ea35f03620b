#!/usr/bin/python3
"""Models fitted here with scikit-learn (Debian's python3-sklearn) and, when
python3-torch is installed, PyTorch, converted with kinfer-convert (its CLI
and its importable functions), pushed to the registry, served by a real
worker through `kinfer submit`, and compared with the library's own
predict / predict_proba / forward within 1e-5.  Also what must be refused,
with a message that says what and why.

    KINFER_BIN=build /usr/bin/python3 tests/py/test_sklearn_serving.py
"""
import json
import os
import pickle
import sys
import unittest
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kinfer_stack import BIN, Stack  # noqa: E402

sys.path.insert(0, BIN)  # kinfer_convert.py, copied next to kinfer-convert by make
import kinfer_convert as kc  # noqa: E402

# The Python client library, from the checkout (tests/py/test_client_lib.py
# tests it installed with pip; here it is one more way to read the served model)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "producer-tool", "python"))
import kinfer as kinfer_client  # noqa: E402

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.ensemble import VotingClassifier, VotingRegressor  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

try:
    import torch
except ImportError:  # python3-torch is optional (docs/models.md): those tests skip
    torch = None

TOL = 1e-5
N_TEST = 60


def close(got, want, what):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise AssertionError("%s: shape %s, the library's %s" % (what, got.shape, want.shape))
    err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    if err.max() > TOL:
        i = np.unravel_index(int(np.argmax(err)), err.shape)
        raise AssertionError("%s: %s is %.9g, the library says %.9g (tolerance %g)"
                             % (what, list(i), got[i], want[i], TOL))
    return float(err.max())


class SklearnServingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        warnings.simplefilter("ignore", ConvergenceWarning)
        cls.s = Stack().start()
        cls.d = cls.s.dir
        X, y = load_digits(return_X_y=True)
        # the scaler stays on the client (kinfer computes the model, not the
        # Pipeline): what is submitted is what the estimators were fitted on
        cls.scaler = StandardScaler().fit(X[:-N_TEST])
        Xs = cls.scaler.transform(X).astype(np.float32).astype(np.float64)
        cls.X, cls.y = Xs[:-N_TEST], y[:-N_TEST]
        cls.T = Xs[-N_TEST:]  # float32 values: exactly what the worker receives
        with open(os.path.join(cls.d, "rows.jsonl"), "w") as f:
            f.write(json.dumps(cls.T.tolist()) + "\n")  # one job of N_TEST rows
        cls.versions_before = {}

    @classmethod
    def tearDownClass(cls):
        rc = cls.s.stop()
        if rc != 0:
            sys.stderr.write(cls.s.worker_log_text())
        cls.s.cleanup()
        if rc != 0:
            raise AssertionError("worker exited %s on SIGTERM" % rc)

    # -- helpers ---------------------------------------------------------
    def dump(self, est, name):
        path = os.path.join(self.d, name + ".pkl")
        with open(path, "wb") as f:
            pickle.dump(est, f)
        return path

    def convert_cli(self, source, path, name, *extra):
        out = os.path.join(self.d, name + ".kmodel")
        self.s.run(["kinfer-convert", source, path, "--name", name, "-o", out] + list(extra))
        return out

    def push(self, path):
        self.s.run(["kinfer", "model", "push", path, "--activate"])

    def push_blobs(self, files):
        for p in kc.write_files(files, out_dir=self.d):
            self.push(p)

    def serve(self, model, output="raw"):
        """The model's output for the test rows, through kinfer submit --wait."""
        rc, out, err = self.s.run(["kinfer", "submit", "--model", model, "--user", "sk",
                                   "--output", output, "--file", "rows.jsonl", "--wait",
                                   "--timeout", "60"], check=False)
        res = [json.loads(line) for line in out.splitlines() if line.strip()]
        self.assertEqual(len(res), 1, "%s: %s %s" % (model, out, err))
        return rc, res[0]

    def served(self, model, output="raw"):
        rc, r = self.serve(model, output)
        self.assertEqual((rc, r["status"]), (0, "ok"), r)
        return np.array(r["output"], dtype=np.float64)

    # -- scikit-learn, served -------------------------------------------
    def test_mlp_classifier_tanh(self):
        """activation='tanh' is read from the model (a relu guess would be
        wrong); the file ends in softmax, so a second softmax is refused."""
        clf = MLPClassifier(hidden_layer_sizes=(24,), activation="tanh", max_iter=60,
                            random_state=1).fit(self.X, self.y)
        self.push(self.convert_cli("sklearn", self.dump(clf, "mlpc"), "mlpc"))
        close(self.served("mlpc"), clf.predict_proba(self.T), "MLPClassifier predict_proba")
        np.testing.assert_array_equal(self.served("mlpc", "argmax").ravel(),
                                      clf.predict(self.T))  # classes_ are 0..9
        rc, r = self.serve("mlpc", "softmax")
        self.assertEqual((rc, r["status"], r["error"]), (1, "error", "bad_request"), r)
        self.assertIn("already outputs probabilities", r["message"])

    def test_mlp_classifier_binary(self):
        """out_activation_ logistic, one unit: two columns [1 - p, p] as
        predict_proba, from softmax([0, z])."""
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=40, random_state=2).fit(
            self.X, self.y == 3)
        self.assertEqual(clf.out_activation_, "logistic")
        self.push_blobs(kc.from_sklearn(clf, "mlpc-bin"))
        close(self.served("mlpc-bin"), clf.predict_proba(self.T), "binary MLPClassifier")

    def test_mlp_regressor(self):
        reg = MLPRegressor(hidden_layer_sizes=(16,), activation="logistic", max_iter=60,
                           random_state=3).fit(self.X, np.c_[self.y, self.X[:, 20]])
        self.push(self.convert_cli("sklearn", self.dump(reg, "mlpr"), "mlpr"))
        close(self.served("mlpr"), reg.predict(self.T), "MLPRegressor predict")

    def test_voting_regressor(self):
        """VotingRegressor: the weighted average of its members' predictions,
        no acts (a v1 ensemble file)."""
        vr = VotingRegressor([("lin", LinearRegression()),
                              ("mlp", MLPRegressor(hidden_layer_sizes=(8,), max_iter=30,
                                                   random_state=5))],
                             weights=[1, 3]).fit(self.X, self.y.astype(float))
        files = kc.from_sklearn(vr, "vreg")
        self.assertEqual([n for n, _ in files], ["vreg.lin", "vreg.mlp", "vreg"])
        self.push_blobs(files)
        close(self.served("vreg"), vr.predict(self.T).reshape(-1, 1), "VotingRegressor")

    def test_logistic_regression(self):
        """binary one-vs-rest (sigmoid: [0, z]), binary multinomial ([-z, z]),
        multinomial (softmax)."""
        cases = [("lr-bin", LogisticRegression(max_iter=300), self.y == 7),
                 ("lr-bin-mn", LogisticRegression(multi_class="multinomial", max_iter=300),
                  self.y == 7),
                 ("lr-multi", LogisticRegression(max_iter=300), self.y)]
        for name, est, target in cases:
            est.fit(self.X, target)
            self.push_blobs(kc.from_sklearn(est, name))
            close(self.served(name), est.predict_proba(self.T), name + " predict_proba")
        # --logits: the decision function, and a job's softmax is predict_proba again
        est = cases[2][1]
        self.push(self.convert_cli("sklearn", self.dump(est, "lr"), "lr-logits", "--logits"))
        close(self.served("lr-logits"), est.decision_function(self.T), "decision_function")
        close(self.served("lr-logits", "softmax"), est.predict_proba(self.T), "softmax(logits)")

    def test_linear_regression(self):
        reg = LinearRegression().fit(self.X, np.c_[self.y, 2.0 * self.y - self.X[:, 10]])
        self.push(self.convert_cli("sklearn", self.dump(reg, "linreg"), "linreg"))
        close(self.served("linreg"), reg.predict(self.T), "LinearRegression predict")
        one = LinearRegression().fit(self.X, self.y.astype(float))  # 1-D coef_, scalar intercept
        self.push_blobs(kc.from_sklearn(one, "linreg1"))
        close(self.served("linreg1"), one.predict(self.T).reshape(-1, 1), "1-target")

    def test_soft_voting_without_duplicate_pushes(self):
        """VotingClassifier(voting='soft') maps one to one: members pushed
        once, as logits; the ensemble's act softmax turns them into the
        probabilities it averages with the voting weights."""
        vote = VotingClassifier([("mlp", MLPClassifier(hidden_layer_sizes=(16,), max_iter=50,
                                                       random_state=4)),
                                 ("lr", LogisticRegression(max_iter=300))],
                                voting="soft", weights=[2, 1]).fit(self.X, self.y)
        out = self.convert_cli("sklearn", self.dump(vote, "vote"), "vote")
        for name in ("vote.mlp", "vote.lr"):
            self.push(os.path.join(self.d, name + ".kmodel"))
        self.push(out)
        close(self.served("vote"), vote.predict_proba(self.T), "soft vote predict_proba")
        # ... and the same through the Python client library (producer-tool/python),
        # in jobs of 7 rows, with the same sklearn reference
        with kinfer_client.Client(self.s.env["KINFER_BROKERS"], self.s.env["KINFER_REDIS"],
                                  user="sk-client") as c:
            close(c.predict("vote", self.T, rows_per_job=7, timeout=60),
                  vote.predict_proba(self.T), "soft vote through the Python client")
        # the members serve their own probabilities and logits from the one push
        mlp, lr = vote.named_estimators_["mlp"], vote.named_estimators_["lr"]
        close(self.served("vote.mlp", "softmax"), mlp.predict_proba(self.T), "member mlp")
        close(self.served("vote.lr"), lr.decision_function(self.T), "member lr logits")
        _, lst, _ = self.s.run(["kinfer", "model", "list", "--json"])
        vers = {m["name"]: len(m["versions"]) for m in json.loads(lst)["models"]}
        self.assertEqual((vers["vote.mlp"], vers["vote.lr"], vers["vote"]), (1, 1, 1), vers)
        _, show, _ = self.s.run(["kinfer", "model", "show", "vote"])
        self.assertIn("output = 0.666667 x softmax(vote.mlp (active)) + 0.333333 x "
                      "softmax(vote.lr (active))", show)
        self.assertIn("weighted sum of its members' outputs", show)
        # a softmax of these averaged probabilities is refused like any other
        rc, r = self.serve("vote", "softmax")
        self.assertEqual((rc, r.get("error")), (1, "bad_request"), r)
        # an act on a nested ensemble cannot be flattened: refused at push
        spec = os.path.join(self.d, "nest.json")
        with open(spec, "w") as f:
            json.dump({"name": "nest", "kind": "ensemble", "input_dim": 64, "output_dim": 10,
                       "members": [{"model": "vote", "weight": 1, "act": "softmax"}]}, f)
        self.s.run(["kinfer", "model", "build", spec, "-o", "nest.kmodel"])
        rc, _, err = self.s.run(["kinfer", "model", "push", "nest.kmodel"], check=False)
        self.assertEqual(rc, 1, err)
        self.assertIn("member 'vote' version 1 is an ensemble: act \"softmax\" applies to an "
                      "mlp member only", err)
        # ... and so is making a followed member an ensemble later, unless --force
        self.s.run(["kinfer", "model", "push", "vote.lr.kmodel", "--name", "flip", "--activate"])
        for name, members, push in (
                ("outer", [{"model": "flip", "weight": 1, "act": "softmax"}], ["--activate"]),
                ("flip", [{"model": "vote.mlp", "weight": 1}], ["--activate"])):
            with open(spec, "w") as f:
                json.dump({"name": name, "kind": "ensemble", "input_dim": 64, "output_dim": 10,
                           "members": members}, f)
            self.s.run(["kinfer", "model", "build", spec, "-o", name + ".kmodel"])
            rc, _, err = self.s.run(["kinfer", "model", "push", name + ".kmodel"] + push,
                                    check=False)
        self.assertEqual(rc, 1, err)
        self.assertIn("ensemble 'outer' version 1 follows 'flip' with act \"softmax\", which "
                      "applies to an mlp, but 'flip' version 2 is an ensemble", err)
        self.s.run(["kinfer", "model", "push", "flip.kmodel"])  # stored, not active: fine
        rc, _, err = self.s.run(["kinfer", "model", "activate", "flip", "2"], check=False)
        self.assertEqual(rc, 1, err)
        self.assertIn("follows 'flip' with act \"softmax\", which applies to an mlp, but "
                      "'flip' version 2 is an ensemble", err)
        close(self.served("outer"), lr.predict_proba(self.T), "outer, still on flip v1")

    # -- PyTorch, served -------------------------------------------------
    @unittest.skipIf(torch is None, "python3-torch not installed (optional: docs/models.md)")
    def test_torch_sequential(self):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Dropout(0.1),
                                  torch.nn.Linear(32, 10), torch.nn.Softmax(dim=1))
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        xt, yt = torch.tensor(self.X, dtype=torch.float32), torch.tensor(self.y)
        for _ in range(30):
            opt.zero_grad()
            torch.nn.functional.nll_loss(torch.log(net(xt) + 1e-9), yt).backward()
            opt.step()
        net.eval()
        path = os.path.join(self.d, "net.pt")
        torch.save(net, path)
        self.push(self.convert_cli("torch", path, "net"))
        with torch.no_grad():
            want = net(torch.tensor(self.T, dtype=torch.float32)).double().numpy()
        close(self.served("net"), want, "nn.Sequential forward")
        # a state_dict has no activations: refused unless --act names them
        torch.save(net.state_dict(), os.path.join(self.d, "sd.pt"))
        rc, _, err = self.s.run(["kinfer-convert", "torch", "sd.pt", "-o", "sd.kmodel"],
                                check=False)
        self.assertEqual(rc, 1)
        self.assertIn("holds a state_dict: it has weights but no activations", err)
        self.s.run(["kinfer-convert", "torch", "sd.pt", "--act", "tanh,softmax", "-o",
                    "sd.kmodel"])

    @unittest.skipIf(torch is None, "python3-torch not installed")
    def test_torch_refusals(self):
        nn = torch.nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)

            def forward(self, x):
                return torch.relu(self.fc(x))

        cases = [(Net(), "a Net, not an nn.Sequential: a custom module's activations are "
                         "code in its forward()"),
                 (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
                  "module 1 ('1') is BatchNorm1d, which kinfer does not compute"),
                 (nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=0)),
                  "Softmax(dim=0): kinfer's softmax is over each row"),
                 (nn.Sequential(nn.ReLU(), nn.Linear(4, 3)), "comes before any Linear"),
                 (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Tanh()),
                  "follows another activation (relu)"),
                 (nn.Sequential(nn.Linear(4, 3), nn.Linear(4, 3)),
                  "layer 1 ('[1] Linear.weight (transposed)', 4x3) takes 4 inputs, but layer "
                  "0 gives 3")]
        for module, want in cases:
            with self.assertRaises(kc.ConvertError) as cm:
                kc.from_torch(module, "t")
            self.assertIn(want, str(cm.exception))

    # -- refused, with what and why -------------------------------------
    def test_refusals(self):
        X, y = self.X[:200], self.y[:200]
        nan_mlp = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5).fit(X, y)
        nan_mlp.coefs_[1][2, 0] = np.nan
        pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=50)).fit(X, y)
        cases = [
            (pipe, "a Pipeline (standardscaler -> logisticregression): kinfer computes the "
                   "final estimator only. Apply 'standardscaler' on the client before "
                   "submitting, exactly as in training"),
            (KNeighborsClassifier().fit(X, y), "KNeighborsClassifier is not supported"),
            (LogisticRegression(multi_class="ovr", max_iter=50).fit(X, y),
             "LogisticRegression with 10 classes is one-vs-rest"),
            (VotingClassifier([("a", LogisticRegression(max_iter=50))], voting="hard").fit(X, y),
             "VotingClassifier(voting='hard') takes a majority of predicted labels"),
            (VotingClassifier([("a b", LogisticRegression(max_iter=50))],
                              voting="soft").fit(X, y),
             "member 'a b' would be named 'v.a b', not a model name"),
            (VotingClassifier([("p", pipe)], voting="soft").fit(X, y),
             "member 'p': a Pipeline"),
            (MLPClassifier(), "MLPClassifier is not fitted (it has no coefs_)"),
            (nan_mlp, "'coefs_[1]'[2, 0] is NaN"),
            (np.zeros(3), "a numpy.ndarray, not a scikit-learn estimator"),
        ]
        for est, want in cases:
            with self.assertRaises(kc.ConvertError) as cm:
                kc.from_sklearn(est, "v")
            self.assertIn(want, str(cm.exception))
        # through the CLI: exit 1, the reason, no file
        rc, _, err = self.s.run(["kinfer-convert", "sklearn", self.dump(pipe, "pipe"), "-o",
                                 "pipe.kmodel"], check=False)
        self.assertEqual(rc, 1)
        self.assertIn("on the client before submitting", err)
        self.assertFalse(os.path.exists(os.path.join(self.d, "pipe.kmodel")))
        with open(os.path.join(self.d, "junk.pkl"), "wb") as f:
            f.write(b"not a pickle")
        rc, _, err = self.s.run(["kinfer-convert", "sklearn", "junk.pkl"], check=False)
        self.assertEqual(rc, 1)
        self.assertIn("junk.pkl: cannot load as a pickle or joblib file", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
