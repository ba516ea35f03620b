"""kinfer_convert - fitted models and weight arrays to kinfer model files.

The module behind `kinfer-convert` (docs/models.md), importable for use
in-process (put producer-tool/ or build/ on sys.path):

    import kinfer_convert as kc
    files = kc.from_sklearn(clf, "digits")     # [(name, bytes)], push in order
    files = kc.from_torch(net, "digits-net")   # an nn.Sequential
    kc.write_files(files, "models/")

Three sources:

  sklearn  a fitted MLPClassifier, MLPRegressor, LogisticRegression (binary
           or multinomial), LinearRegression, or a VotingClassifier(voting=
           "soft") / VotingRegressor of those (an ensemble plus one file per
           member), from a pickle/joblib file or in-process.  Activations and
           the output transform are read from the estimator (activation,
           out_activation_, multi_class, solver), never assumed.
  torch    an nn.Sequential of Linear and activation modules (ReLU, Tanh,
           Sigmoid, Softmax over the last dim, Identity; Dropout is skipped:
           inference), saved whole with torch.save or in-process.  A
           state_dict holds no activations: give them with --act.
  npz      numpy weights (.npz):
             kinfer  W0, b0, W1, b1, ...       W{i} is [in, out], b{i} is [out]
             torch   <layer>.weight, .bias     a PyTorch state_dict saved with
                                               numpy arrays: weight is [out, in]
                                               (transposed here), layers in the
                                               archive's order unless --order
           A missing bias is zeros; by default relu between layers and
           identity after the last (--act names them).

A classifier's file outputs what predict_proba returns: a binary one two
columns [P(classes_[0]), P(classes_[1])] computed as softmax([0, z]) (or
softmax([-z, z]) for a binary multinomial LogisticRegression), which is
exactly 1 - sigmoid(z), sigmoid(z); a multiclass one softmax.  With
logits=True (--logits) the last transform is left out: the file outputs the
decision function, and an ensemble member's act (softmax) or a job's
`--output softmax` gives the probabilities back.

What kinfer would refuse (sizes that do not chain, NaN or infinite values,
values that overflow float32, more than 64 layers or 2^20 units, a bad name)
and what it cannot compute (a Pipeline's scaler, an unknown layer, a one-vs-
rest multiclass LogisticRegression) is refused with the array or estimator
named and the reason, and nothing is written.

Uses Debian's /usr/bin/python3 (apt: python3-numpy python3-msgpack; for
sklearn python3-sklearn, for torch python3-torch).  Loading a pickle, a
joblib file or a whole torch module runs code from the file: convert only
files you trust.
"""
import argparse
import os
import re
import sys

import msgpack
import numpy as np

ACTS = ("identity", "relu", "tanh", "sigmoid", "softmax")
# Other libraries' names for the same functions: scikit-learn calls the
# sigmoid "logistic"; PyTorch's modules are capitalised (ReLU, Tanh, ...).
ACT_ALIASES = {"logistic": "sigmoid", "linear": "identity", "none": "identity"}


def canonical_act(a):
    a = a.strip().lower()
    return ACT_ALIASES.get(a, a)


def plural(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")
MAX_LAYERS = 64
MAX_DIM = 1 << 20
NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class ConvertError(Exception):
    pass


def natural_key(s):
    """'W10' after 'W9': compare digit runs as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def kinfer_layers(arrays):
    """W0, b0, W1, b1, ...: W as [in, out]."""
    idx = sorted(int(k[1:]) for k in arrays if re.fullmatch(r"W\d+", k))
    if not idx:
        raise ConvertError("no W0, W1, ... arrays")
    if idx != list(range(len(idx))):
        raise ConvertError("W arrays must be numbered 0..%d without gaps, found %s"
                           % (len(idx) - 1, ", ".join("W%d" % i for i in idx)))
    extra = set(arrays) - {"W%d" % i for i in idx} - {"b%d" % i for i in idx}
    if extra:
        raise ConvertError("unexpected arrays for the W0/b0 layout: %s"
                           % ", ".join(sorted(extra, key=natural_key)))
    layers = []
    for i in idx:
        layers.append(("W%d" % i, arrays["W%d" % i], "b%d" % i, arrays.get("b%d" % i)))
    return layers


def torch_layers(arrays, order, names_in_file):
    """<layer>.weight [out, in] and <layer>.bias [out]."""
    prefixes = []
    for k in names_in_file:
        if k.endswith(".weight"):
            prefixes.append(k[: -len(".weight")])
        elif not k.endswith(".bias"):
            raise ConvertError("'%s' is neither <layer>.weight nor <layer>.bias (only Linear "
                               "layers convert; drop other entries before saving)" % k)
    for k in names_in_file:
        if k.endswith(".bias") and k[: -len(".bias")] not in prefixes:
            raise ConvertError("'%s' has no matching .weight" % k)
    if order:
        missing = [p for p in order if p not in prefixes]
        if missing:
            raise ConvertError("--order names layers the file does not have: %s (it has: %s)"
                               % (", ".join(missing), ", ".join(prefixes)))
        unused = [p for p in prefixes if p not in order]
        if unused:
            raise ConvertError("--order leaves out layers the file has: %s" % ", ".join(unused))
        prefixes = order
    layers = []
    for p in prefixes:
        w = arrays[p + ".weight"]
        if w.ndim != 2:
            raise ConvertError("'%s.weight' has shape %s, a Linear weight is [out, in]"
                               % (p, list(w.shape)))
        layers.append((p + ".weight (transposed)", w.T, p + ".bias", arrays.get(p + ".bias")))
    return layers


def detect_layout(names):
    if any(re.fullmatch(r"W\d+", k) for k in names):
        return "kinfer"
    if any(k.endswith(".weight") for k in names):
        return "torch"
    raise ConvertError("cannot tell the layout: expected W0, b0, ... or <layer>.weight, "
                       "<layer>.bias (found: %s)" % ", ".join(names[:8]))


def f32_bin(name, a):
    """float32 little-endian, row-major; refuses what kinfer refuses."""
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ConvertError("'%s' has dtype %s, not a real number type" % (name, a.dtype))
    with np.errstate(over="ignore", invalid="ignore"):
        f = np.ascontiguousarray(a, dtype="<f4")
    bad = ~np.isfinite(f)
    if bad.any():
        pos = np.unravel_index(int(np.argmax(bad)), f.shape)
        v = a[pos]
        what = "NaN" if np.isnan(v) else "infinite" if np.isinf(v) else \
            "%g, beyond float32" % float(v)
        raise ConvertError("'%s'%s is %s" % (name, list(int(i) for i in pos), what))
    return f.tobytes()


def build(layers, acts, name):
    if not NAME_RE.match(name):
        raise ConvertError("model name '%s': 1..64 chars of [A-Za-z0-9._:-]" % name)
    if not 1 <= len(layers) <= MAX_LAYERS:
        raise ConvertError("%s, kinfer takes 1..%d" % (plural(len(layers), "layer"), MAX_LAYERS))
    if acts is None:
        acts = ["relu"] * (len(layers) - 1) + ["identity"]
    if len(acts) != len(layers):
        raise ConvertError("--act names %s for %s" % (plural(len(acts), "activation"),
                                                      plural(len(layers), "layer")))
    given = acts
    acts = [canonical_act(a) for a in acts]
    for a, g in zip(acts, given):
        if a not in ACTS:
            raise ConvertError("unknown activation '%s' (%s; scikit-learn's logistic is "
                               "sigmoid)" % (g, ", ".join(ACTS)))
    out_layers = []
    prev = None
    for i, (wname, w, bname, b) in enumerate(layers):
        if w.ndim != 2:
            raise ConvertError("'%s' has shape %s, expected [in, out]" % (wname, list(w.shape)))
        n_in, n_out = (int(d) for d in w.shape)
        if not (1 <= n_in <= MAX_DIM and 1 <= n_out <= MAX_DIM):
            raise ConvertError("'%s' is %dx%d; sizes must be 1..%d" % (wname, n_in, n_out, MAX_DIM))
        if prev is not None and n_in != prev:
            hint = (": transposed? kinfer wants [in, out] and its other side is %d (a "
                    "scikit-learn coef_ or a torch weight is [out, in]: pass W.T)" % prev
                    if n_out == prev else "")
            raise ConvertError("layer %d ('%s', %dx%d) takes %d inputs, but layer %d gives %d%s"
                               % (i, wname, n_in, n_out, n_in, i - 1, prev, hint))
        if b is None:
            print("kinfer-convert: no '%s': layer %d gets a zero bias" % (bname, i), file=sys.stderr)
            b = np.zeros(n_out, dtype=np.float32)
        b = np.asarray(b)
        if b.ndim == 2 and 1 in b.shape:
            b = b.reshape(-1)
        if b.ndim != 1 or b.shape[0] != n_out:
            hint = (": or is '%s' (%dx%d) transposed? kinfer wants [in, out], and this bias "
                    "fits its first side (a scikit-learn coef_ or a torch weight is [out, in]: "
                    "pass W.T)" % (wname, n_in, n_out)
                    if b.ndim == 1 and b.shape[0] == n_in and n_in != n_out else "")
            raise ConvertError("'%s' has shape %s, layer %d needs [%d]%s"
                               % (bname, list(b.shape), i, n_out, hint))
        out_layers.append({"W": f32_bin(wname, w), "b": f32_bin(bname, b), "act": acts[i]})
        prev = n_out
    model = {
        "format": "kinfer-model",
        "v": 1,
        "name": name,
        "kind": "mlp",
        "input_dim": int(layers[0][1].shape[0]),
        "output_dim": prev,
        "layers": out_layers,
    }
    return msgpack.packb(model, use_bin_type=True)


# ---- ensembles (docs/protocol.md, "Ensemble file") ----

def build_ensemble(name, input_dim, output_dim, members):
    """members: [(model name, weight, act)].  v2 only when an act is set,
    like kinfer's own encoder, so older workers keep reading the rest."""
    if not NAME_RE.match(name):
        raise ConvertError("model name '%s': 1..64 chars of [A-Za-z0-9._:-]" % name)
    if not 1 <= len(members) <= 64:
        raise ConvertError("%s, an ensemble takes 1..64" % plural(len(members), "member"))
    out = []
    for model, weight, act in members:
        w = float(weight)
        if not np.isfinite(w) or abs(w) > np.finfo(np.float32).max:
            raise ConvertError("member '%s': weight %r is not a finite float32" % (model, weight))
        m = {"model": model, "weight": w}
        if act != "identity":
            m["act"] = act
        out.append(m)
    v = 2 if any("act" in m for m in out) else 1
    return msgpack.packb({"format": "kinfer-model", "v": v, "name": name, "kind": "ensemble",
                          "input_dim": int(input_dim), "output_dim": int(output_dim),
                          "members": out}, use_bin_type=True)


# ---- scikit-learn ----

SKLEARN_SUPPORTED = ("MLPClassifier, MLPRegressor, LogisticRegression, LinearRegression, and "
                     "VotingClassifier(voting='soft') or VotingRegressor of those")


def _two_class_logits(w, b, neg):
    """[in] weights and a scalar bias of one logit z to two columns whose
    softmax is predict_proba's: [0, z] (sigmoid) or [-z, z] (multinomial)."""
    w = np.asarray(w, dtype=np.float64).reshape(-1, 1)
    b = float(np.asarray(b).reshape(-1)[0])
    if neg:
        return np.hstack([-w, w]), np.array([-b, b])
    return np.hstack([np.zeros_like(w), w]), np.array([0.0, b])


def _fitted(est, attr):
    if not hasattr(est, attr):
        raise ConvertError("%s is not fitted (it has no %s): call fit() first"
                           % (type(est).__name__, attr))


def _sklearn_mlp(est, name, logits):
    from sklearn.neural_network import MLPClassifier
    _fitted(est, "coefs_")
    hidden = canonical_act(est.activation)
    out_act = canonical_act(est.out_activation_)
    for what, a in (("activation", est.activation), ("out_activation_", est.out_activation_)):
        if canonical_act(a) not in ACTS:
            raise ConvertError("%s.%s is '%s', which kinfer does not compute (%s)"
                               % (type(est).__name__, what, a, ", ".join(ACTS)))
    n = len(est.coefs_)
    layers = [("coefs_[%d]" % i, est.coefs_[i], "intercepts_[%d]" % i, est.intercepts_[i])
              for i in range(n)]
    acts = [hidden] * (n - 1) + [out_act]
    if isinstance(est, MLPClassifier) and est.n_outputs_ == 1 and out_act == "sigmoid":
        # binary: predict_proba is [1 - p, p]; softmax([0, z]) is exactly that
        W, b = _two_class_logits(est.coefs_[-1], est.intercepts_[-1], neg=False)
        layers[-1] = ("coefs_[%d] (as [0, z])" % (n - 1), W,
                      "intercepts_[%d] (as [0, z])" % (n - 1), b)
        acts[-1] = "softmax"
    if logits:
        if not isinstance(est, MLPClassifier):
            raise ConvertError("logits: %s outputs values, not probabilities"
                               % type(est).__name__)
        acts[-1] = "identity"
    return build(layers, acts, name), acts[-1]


def _sklearn_logreg(est, name, logits):
    _fitted(est, "coef_")
    k = len(est.classes_)
    mc, solver = est.multi_class, est.solver
    # sklearn 1.2's LogisticRegression.predict_proba, decided the same way
    ovr = mc in ("ovr", "warn") or (mc == "auto" and (k <= 2 or solver in ("liblinear",
                                                                          "newton-cholesky")))
    coef, icpt = np.asarray(est.coef_), np.asarray(est.intercept_)
    if k == 2:
        W, b = _two_class_logits(coef[0], icpt, neg=not ovr)
        layers = [("coef_ (as [%sz, z])" % ("0, " if ovr else "-"), W, "intercept_", b)]
    elif ovr:
        raise ConvertError("LogisticRegression with %d classes is one-vs-rest (multi_class=%r, "
                           "solver=%r): its predict_proba divides one sigmoid per class by their "
                           "sum, which is not a softmax of a linear layer; refit with "
                           "multi_class='multinomial' (and a solver other than liblinear)"
                           % (k, mc, solver))
    else:
        layers = [("coef_ (transposed)", coef.T, "intercept_", icpt)]
    act = "identity" if logits else "softmax"
    return build(layers, [act], name), act


def _sklearn_linreg(est, name, logits):
    _fitted(est, "coef_")
    if logits:
        raise ConvertError("logits: LinearRegression outputs values, not probabilities")
    coef = np.asarray(est.coef_)
    coef = coef.reshape(1, -1) if coef.ndim == 1 else coef
    icpt = np.asarray(est.intercept_, dtype=np.float64).reshape(-1)
    if icpt.size == 1 and coef.shape[0] > 1:
        icpt = np.repeat(icpt, coef.shape[0])
    return build([("coef_ (transposed)", coef.T, "intercept_", icpt)], ["identity"], name), \
        "identity"


def _sklearn_voting(est, name):
    from sklearn.ensemble import VotingClassifier
    _fitted(est, "estimators_")
    classifier = isinstance(est, VotingClassifier)
    if classifier and est.voting != "soft":
        raise ConvertError("VotingClassifier(voting=%r) takes a majority of predicted labels, "
                           "not a weighted sum; kinfer's ensembles sum outputs: use "
                           "voting='soft'" % est.voting)
    names = [n for n, e in est.estimators if e != "drop"]
    fitted = est.estimators_
    if len(names) != len(fitted):
        raise ConvertError("%s: %d named estimators but %d fitted ones"
                           % (type(est).__name__, len(names), len(fitted)))
    w = np.ones(len(fitted)) if est.weights is None else np.asarray(
        [x for (n, e), x in zip(est.estimators, est.weights) if e != "drop"], dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ConvertError("%s: weights %s must be >= 0 with a positive sum"
                           % (type(est).__name__, list(w)))
    w = w / w.sum()  # np.average's weights
    files, members = [], []
    for n, e, wi in zip(names, fitted, w):
        mname = "%s.%s" % (name, n)
        if not NAME_RE.match(mname):
            raise ConvertError("member '%s' would be named '%s', not a model name (1..64 chars "
                               "of [A-Za-z0-9._:-]): rename the estimator" % (n, mname))
        if type(e).__name__.startswith("Voting"):
            raise ConvertError("member '%s' is itself a %s: convert it apart and write the "
                               "ensemble with kinfer model build" % (n, type(e).__name__))
        try:
            # members output logits; the ensemble turns them into
            # probabilities (act softmax), so each is pushed once and still
            # serves its own probabilities with --output softmax
            blob, act = _sklearn_one(e, mname, logits=classifier)
        except ConvertError as err:
            raise ConvertError("member '%s': %s" % (n, err))
        if classifier and _is_multilabel(e):
            raise ConvertError("member '%s' is multilabel; soft voting averages class "
                               "probabilities" % n)
        files.append((mname, blob))
        members.append((mname, wi, "softmax" if classifier else "identity"))
    din = est.n_features_in_
    dout = len(est.classes_) if classifier else 1
    files.append((name, build_ensemble(name, din, dout, members)))
    return files


def _is_multilabel(e):
    return getattr(e, "out_activation_", None) == "logistic" and getattr(e, "n_outputs_", 1) > 1


def _sklearn_one(est, name, logits):
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    if isinstance(est, (MLPClassifier, MLPRegressor)):
        return _sklearn_mlp(est, name, logits)
    if isinstance(est, LogisticRegression):
        return _sklearn_logreg(est, name, logits)
    if isinstance(est, LinearRegression):
        return _sklearn_linreg(est, name, logits)
    return _sklearn_refuse(est)


def _sklearn_refuse(est):
    from sklearn.pipeline import Pipeline
    if isinstance(est, Pipeline):
        steps = [n for n, _ in est.steps]
        raise ConvertError(
            "a Pipeline (%s): kinfer computes the final estimator only. Apply %s on the client "
            "before submitting, exactly as in training (e.g. rows = pipe[:-1].transform(X)), and "
            "convert pipe[-1], the '%s' step" % (" -> ".join(steps),
                                                 ", ".join("'%s'" % s for s in steps[:-1]),
                                                 steps[-1]))
    raise ConvertError("%s is not supported: kinfer serves %s" % (type(est).__name__,
                                                                  SKLEARN_SUPPORTED))


def from_sklearn(est, name, logits=False):
    """A fitted estimator to model files: [(model name, bytes)], in the
    order to push them (an ensemble's members first)."""
    if type(est).__name__ in ("VotingClassifier", "VotingRegressor"):
        if logits:
            raise ConvertError("logits: a voting ensemble averages its members' outputs; its "
                               "members are written as logits already")
        return _sklearn_voting(est, name)
    if type(est).__module__.split(".")[0] != "sklearn":
        raise ConvertError("a %s.%s, not a scikit-learn estimator"
                           % (type(est).__module__, type(est).__name__))
    return [(name, _sklearn_one(est, name, logits)[0])]


def load_sklearn(path):
    try:
        import joblib
    except ImportError:
        raise ConvertError("reading %s needs joblib (apt: python3-joblib, with python3-sklearn)"
                           % path)
    try:
        return joblib.load(path)  # also reads plain pickles
    except ModuleNotFoundError as e:
        raise ConvertError("%s: needs the module %s (apt: python3-sklearn)" % (path, e.name))
    except Exception as e:  # a pickle can raise anything
        raise ConvertError("%s: cannot load as a pickle or joblib file: %s: %s"
                           % (path, type(e).__name__, e))


# ---- PyTorch ----

TORCH_ACTS = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Softmax": "softmax",
              "Identity": "identity"}


def from_torch(module, name):
    """An nn.Sequential of Linear and activation modules to a model file:
    [(model name, bytes)]."""
    import torch.nn as nn
    if not isinstance(module, nn.Sequential):
        raise ConvertError(
            "a %s, not an nn.Sequential: a custom module's activations are code in its "
            "forward(), which cannot be read; rebuild it as nn.Sequential(Linear, ReLU, ...) "
            "(or save its state_dict with numpy and name the activations with --act)"
            % type(module).__name__)
    layers, acts = [], []
    for i, (key, m) in enumerate(module.named_children()):
        kind = type(m).__name__
        if isinstance(m, nn.Linear):
            w = m.weight.detach().cpu().numpy()
            b = m.bias.detach().cpu().numpy() if m.bias is not None else None
            layers.append(("[%s] Linear.weight (transposed)" % key, w.T,
                           "[%s] Linear.bias" % key, b))
            acts.append("identity")
        elif kind in TORCH_ACTS:
            if not layers:
                raise ConvertError("module %d ('%s', %s) comes before any Linear: kinfer applies "
                                   "activations to a layer's output" % (i, key, kind))
            if acts[-1] != "identity":
                raise ConvertError("module %d ('%s', %s) follows another activation (%s) on "
                                   "layer %d: one activation per Linear"
                                   % (i, key, kind, acts[-1], len(layers) - 1))
            if kind == "Softmax" and m.dim not in (-1, 1):
                raise ConvertError("module %d ('%s') is Softmax(dim=%r): kinfer's softmax is over "
                                   "each row, dim=1 or -1" % (i, key, m.dim))
            acts[-1] = TORCH_ACTS[kind]
        elif isinstance(m, nn.Dropout):
            continue  # the identity at inference
        else:
            raise ConvertError("module %d ('%s') is %s, which kinfer does not compute: an "
                               "nn.Sequential converts from Linear, %s and Dropout only"
                               % (i, key, kind, ", ".join(TORCH_ACTS)))
    if not layers:
        raise ConvertError("the nn.Sequential has no Linear layer")
    return [(name, build(layers, acts, name))]


def load_torch(path):
    try:
        import torch
    except ImportError:
        raise ConvertError("reading %s needs PyTorch (apt: python3-torch)" % path)
    try:
        return torch.load(path, map_location="cpu")
    except Exception as e:
        raise ConvertError("%s: cannot load with torch.load: %s: %s" % (path, type(e).__name__, e))


# ---- files ----

def write_files(files, out_dir=None, out=None):
    """Writes [(name, bytes)]: the last to out (if given), every other to
    NAME.kmodel in out_dir (default: out's folder, or the current one).
    Returns the paths written, in push order."""
    paths = []
    base = out_dir if out_dir is not None else (os.path.dirname(out) if out else ".")
    for i, (name, blob) in enumerate(files):
        p = out if (out and i == len(files) - 1) else os.path.join(base or ".", name + ".kmodel")
        with open(p, "wb") as f:
            f.write(blob)
        paths.append(p)
    return paths


def _summary(blob):
    m = msgpack.unpackb(blob, raw=False)
    if m["kind"] == "ensemble":
        return "ensemble of %s, %d -> %d, %s" % (
            plural(len(m["members"]), "member"), m["input_dim"], m["output_dim"],
            " + ".join("%.6g x %s%s" % (x["weight"], x.get("act", ""),
                                        "(%s)" % x["model"] if "act" in x else x["model"])
                       for x in m["members"]))
    dims = [m["input_dim"]] + [len(l["b"]) // 4 for l in m["layers"]]
    return "%s, %s, %s" % (plural(len(m["layers"]), "layer"), " -> ".join(map(str, dims)),
                           ", ".join(l["act"] for l in m["layers"]))


def _npz_files(args):
    try:
        npz = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConvertError("%s: cannot read as .npz: %s" % (args.input, e))
    if not hasattr(npz, "files"):
        raise ConvertError("%s: a single array, not an .npz archive of named arrays" % args.input)
    names = list(npz.files)
    arrays = {k: npz[k] for k in names}
    layout = detect_layout(names) if args.layout == "auto" else args.layout
    if layout == "kinfer":
        layers = kinfer_layers(arrays)
    else:
        order = [p for p in args.order.split(",") if p] if args.order else None
        layers = torch_layers(arrays, order, names)
    acts = [a.strip() for a in args.act.split(",")] if args.act else None
    return [(args.name, build(layers, acts, args.name))], layout


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    source = "npz"
    if argv and argv[0] in ("sklearn", "torch", "npz"):
        source = argv.pop(0)
    ap = argparse.ArgumentParser(
        prog="kinfer-convert" + ("" if source == "npz" else " " + source),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a fitted model or weight arrays into kinfer model files "
                    "(docs/models.md).\n\n"
                    "  kinfer-convert sklearn MODEL.joblib -o M.kmodel   a fitted scikit-learn "
                    "estimator\n"
                    "                                                  (pickle or joblib)\n"
                    "  kinfer-convert torch MODEL.pt -o M.kmodel         an nn.Sequential saved "
                    "with torch.save\n"
                    "  kinfer-convert [npz] WEIGHTS.npz -o M.kmodel      numpy arrays (W0,b0,... "
                    "or a state_dict)\n\n"
                    "scikit-learn: " + SKLEARN_SUPPORTED + ". Activations and the output "
                    "transform come from the model. A Pipeline is refused: apply its scaler on "
                    "the client, as in training, and convert its last step. Loading a pickle or "
                    "a torch module runs code from the file: convert only files you trust.",
        epilog="Example: kinfer-convert sklearn digits.joblib --name digits -o digits.kmodel && "
               "kinfer model push digits.kmodel --activate.  A voting ensemble writes one file "
               "per member next to the ensemble's; push them in the order printed.  Exit "
               "status 0, or 1 with the reason on stderr.")
    ap.add_argument("input", help="the model file (.joblib/.pkl, .pt) or the .npz archive")
    ap.add_argument("-n", "--name", help="model name (default: the output file's name, or the "
                                         "input's, without extension)")
    ap.add_argument("-o", "--out", help="model file to write (default NAME.kmodel)")
    ap.add_argument("-a", "--act", help="npz, or a torch state_dict: activations, one per layer, "
                                        "e.g. relu,relu,softmax (npz default: relu between "
                                        "layers, identity last; scikit-learn's logistic and "
                                        "PyTorch's ReLU are accepted)")
    ap.add_argument("--logits", action="store_true",
                    help="sklearn classifiers: output the decision function (logits), not "
                         "predict_proba; a job's --output softmax or an ensemble member's act "
                         "softmax gives the probabilities")
    ap.add_argument("--layout", choices=("auto", "kinfer", "torch"), default="auto",
                    help="npz: array naming (default: recognised from the names)")
    ap.add_argument("--order", help="npz torch layout: layer names in forward order, e.g. "
                                    "fc1,fc2,out (default: the archive's order)")
    args = ap.parse_args(argv)
    args.name = args.name or os.path.splitext(os.path.basename(args.out or args.input))[0]
    layout = source
    try:
        if args.logits and source != "sklearn":
            raise ConvertError("--logits is for scikit-learn classifiers")
        if args.act and source == "sklearn":
            raise ConvertError("--act: a scikit-learn model's activations are read from it")
        if source == "npz":
            files, layout = _npz_files(args)
        elif source == "sklearn":
            files = from_sklearn(load_sklearn(args.input), args.name, logits=args.logits)
        else:
            obj = load_torch(args.input)
            if isinstance(obj, dict):
                if not args.act:
                    raise ConvertError("%s holds a state_dict: it has weights but no "
                                       "activations; name them with --act (e.g. relu,identity), "
                                       "or torch.save the nn.Sequential itself" % args.input)
                arrays = {k: v.detach().cpu().numpy() for k, v in obj.items()}
                layers = torch_layers(arrays, None, list(arrays))
                files = [(args.name, build(layers, [a.strip() for a in args.act.split(",")],
                                           args.name))]
            else:
                if args.act:
                    raise ConvertError("--act: an nn.Sequential's activations are read from it")
                files = from_torch(obj, args.name)
        out = args.out or args.name + ".kmodel"
        paths = write_files(files, out=out)
    except (ConvertError, OSError) as e:
        print("kinfer-convert: %s" % e, file=sys.stderr)
        return 1
    for p, (name, blob) in zip(paths, files):
        print("kinfer-convert: wrote %s: model %s (%s), %s, %d bytes"
              % (p, name, layout, _summary(blob), len(blob)), file=sys.stderr)
    if len(paths) > 1:
        print("kinfer-convert: push in this order: %s"
              % " && ".join("kinfer model push %s --activate" % p for p in paths),
              file=sys.stderr)
    return 0
