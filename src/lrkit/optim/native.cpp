// lrkit's per-step bookkeeping over many tensors, read in C++ instead of one Python call
// per tensor (lrkit/optim/_native.py builds it against the installed torch's headers on
// first use and falls back to the Python code it mirrors where it cannot).
//
// A step of a kept kernel plan (lrkit/optim/_kernel.py, GroupPlan) must confirm that
// nothing it was built from has changed and read this step's gradient addresses: per
// tensor that is p.grad, g.is_contiguous(), g.data_ptr() and p.data_ptr() through torch's
// Python binding (about 80 ns each), and the identity of each state tensor in its dict.
// Here the same reads cost a few nanoseconds per tensor. Every function answers exactly
// what the Python code it replaces answers, or None/False where it is unsure, and the
// caller then takes the Python path.
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdint>
#include <exception>
#include <vector>

namespace {

// A writable (or read-only) buffer of `n` 64-bit words, released on scope exit.
struct Words {
  Py_buffer view{};
  bool ok = false;
  Words(PyObject* obj, Py_ssize_t n, bool writable) {
    if (PyObject_GetBuffer(obj, &view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) != 0) {
      PyErr_Clear();
      return;
    }
    ok = view.len == n * 8;
  }
  ~Words() {
    if (view.obj != nullptr) PyBuffer_Release(&view);
  }
  uint64_t* data() const { return static_cast<uint64_t*>(view.buf); }
};

bool plain_tensor(PyObject* obj) {
  return THPVariable_Check(obj) && THPVariable_CheckTypeExact(Py_TYPE(obj));
}

// Whether `t` is a floating-point tensor of `itemsize`-byte entries whose storage holds
// all of its `numel` entries from its offset on (a storage can be shrunk or swapped in
// place, and `.data = ...` can change the dtype, at the same address).
bool holds(const c10::TensorImpl* t, const c10::StorageImpl* st, int64_t numel,
           int64_t itemsize) {
  const caffe2::TypeMeta dt = t->dtype();
  if (st == nullptr || !dt.isScalarType() || !c10::isFloatingType(dt.toScalarType()) ||
      static_cast<int64_t>(dt.itemsize()) != itemsize || t->numel() != numel) {
    return false;
  }
  const int64_t need = (t->storage_offset() + numel) * itemsize;
  return static_cast<int64_t>(st->nbytes()) >= need;
}

// Whether `t` has the sizes of `shape` (a tuple of ints: a torch.Size).
bool same_shape(const at::Tensor& t, PyObject* shape) {
  if (!PyTuple_Check(shape)) return false;
  const c10::IntArrayRef sizes = t.sizes();
  const Py_ssize_t nd = PyTuple_GET_SIZE(shape);
  if (nd != static_cast<Py_ssize_t>(sizes.size())) return false;
  for (Py_ssize_t d = 0; d < nd; ++d) {
    const long long v = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, d));
    if (v != sizes[d]) {
      PyErr_Clear();
      return false;
    }
  }
  return true;
}

// gather(params, kept, none, pp, sizes, gp, itemsize, shapes) -> list of gradients, or
// None.
//
// The gradients of a kept plan's single kernel batch, with their addresses written to gp,
// where everything the plan was built from still holds: `params` (the group's list) holds
// the same objects as `kept`, in the same order; the parameters flagged in `none` (bytes,
// one per parameter) still have no gradient and every other one has one, dense and
// contiguous, of a plain tensor type, outside its parameter's memory; and each of those
// parameters is still at its address in `pp`, contiguous, of its shape in `shapes` (a
// list of torch.Size), it and its gradient floating-point tensors of `itemsize`-byte
// entries, of the number of entries in `sizes`, held whole by their storage (a parameter
// or a gradient given another dtype, shape, layout or a smaller storage in place can keep
// its address). None otherwise (gp is then partly written: the caller discards it).
PyObject* gather(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 8 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[1]) ||
      !PyBytes_CheckExact(args[2]) || !PyLong_Check(args[6]) ||
      !PyList_CheckExact(args[7])) {
    Py_RETURN_NONE;
  }
  PyObject* shapes = args[7];
  const int64_t itemsize = PyLong_AsLongLong(args[6]);
  if (itemsize <= 0) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  PyObject* params = args[0];
  PyObject* kept = args[1];
  const Py_ssize_t n = PyList_GET_SIZE(params);
  if (PyList_GET_SIZE(kept) != n || PyBytes_GET_SIZE(args[2]) != n) Py_RETURN_NONE;
  const char* none = PyBytes_AS_STRING(args[2]);
  Py_ssize_t m = 0;
  for (Py_ssize_t i = 0; i < n; ++i) m += none[i] ? 0 : 1;
  Words pp(args[3], m, false), sizes(args[4], m, false), gp(args[5], m, true);
  if (!pp.ok || !sizes.ok || !gp.ok || PyList_GET_SIZE(shapes) != m) Py_RETURN_NONE;
  PyObject* out = PyList_New(m);
  if (out == nullptr) return nullptr;
  // true where every parameter was visited and every check held (out then holds one
  // gradient per parameter that has one)
  auto fill = [&]() -> bool {
    Py_ssize_t j = 0;
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* p = PyList_GET_ITEM(params, i);
      if (p != PyList_GET_ITEM(kept, i) || !THPVariable_Check(p)) return false;
      const at::Tensor& t = THPVariable_Unpack(p);
      const at::Tensor& g = t.grad();
      if (none[i]) {
        if (g.defined()) return false;
        continue;
      }
      const int64_t size = static_cast<int64_t>(sizes.data()[j]);
      const uint64_t pa = pp.data()[j];
      if (!g.defined() || g.layout() != at::kStrided || !g.is_contiguous() ||
          reinterpret_cast<uint64_t>(t.data_ptr()) != pa || !t.is_contiguous() ||
          !same_shape(t, PyList_GET_ITEM(shapes, j))) {
        return false;
      }
      const uint64_t ga = reinterpret_cast<uint64_t>(g.data_ptr()),
                     nb = static_cast<uint64_t>(size * itemsize);
      if (ga < pa + nb && pa < ga + nb) return false;  // p.grad = p.detach() and the like
      const c10::TensorImpl* ti = t.unsafeGetTensorImpl();
      const c10::TensorImpl* gi = g.unsafeGetTensorImpl();
      if (!holds(ti, ti->unsafe_storage().unsafeGetStorageImpl(), size, itemsize) ||
          !holds(gi, gi->unsafe_storage().unsafeGetStorageImpl(), size, itemsize)) {
        return false;
      }
      PyObject* go = THPVariable_Wrap(g);
      if (go == nullptr) {
        PyErr_Clear();
        return false;
      }
      PyList_SET_ITEM(out, j, go);  // the list owns it now, whatever follows
      if (!plain_tensor(go)) return false;
      gp.data()[j] = reinterpret_cast<uint64_t>(g.data_ptr());
      ++j;
    }
    return j == m;
  };
  bool ok = false;
  try {
    ok = fill();
  } catch (const std::exception&) {
    PyErr_Clear();  // a python_error thrown by torch leaves its exception set
    ok = false;
  }
  if (ok) return out;
  Py_DECREF(out);
  Py_RETURN_NONE;
}

// still(dicts, names, kept, marks) -> bool: whether every object of `dicts` is a dict
// whose entry under each of `names` (a tuple whose items are a str, or a tuple of str:
// alternatives, the first the dict holds) is the object at the same place of
// `kept` (row by row: dict i, name k at i * len(names) + k; None for a missing entry),
// each tensor among them still at the address, of the number of entries and the entry
// size that `marks` (two 64-bit words per place: the address, numel * 16 + itemsize; 0, 0
// for None) recorded when the kernel's pointer tables were built, a floating-point
// tensor held whole by its storage. The same tensor object can change its storage in place
// (`t.data = ...`, `t.set_(...)`, `t.resize_(...)`, `t.untyped_storage().resize_(...)`):
// the kernel would then write through a stale or too short pointer.
//
// Reading a tensor's address takes three dependent loads (the Python object, its
// TensorImpl, its StorageImpl) that a step's traffic has pushed out of the cache. Each
// level is read in its own pass over the tensors, prefetched one pass ahead, so that
// the misses of many tensors overlap: about 20-30 ns per tensor on a cold cache, against
// 8-10 for the identities alone.
PyObject* still(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 || !PyList_CheckExact(args[0]) || !PyTuple_CheckExact(args[1]) ||
      !PyList_CheckExact(args[2])) {
    Py_RETURN_FALSE;
  }
  PyObject* dicts = args[0];
  PyObject* names = args[1];
  PyObject* kept = args[2];
  const Py_ssize_t n = PyList_GET_SIZE(dicts), k = PyTuple_GET_SIZE(names);
  const Py_ssize_t total = n * k;
  if (PyList_GET_SIZE(kept) != total) Py_RETURN_FALSE;
  Words marks(args[3], 2 * total, false);
  if (!marks.ok) Py_RETURN_FALSE;
  const uint64_t* mk = marks.data();
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* d = PyList_GET_ITEM(dicts, i);
    if (!PyDict_Check(d)) Py_RETURN_FALSE;
    for (Py_ssize_t c = 0; c < k; ++c) {
      PyObject* name = PyTuple_GET_ITEM(names, c);
      PyObject* v = nullptr;
      if (PyTuple_CheckExact(name)) {  // alternatives: the first one the dict holds
        for (Py_ssize_t a = 0; v == nullptr && a < PyTuple_GET_SIZE(name); ++a) {
          v = PyDict_GetItemWithError(d, PyTuple_GET_ITEM(name, a));
          if (v == nullptr && PyErr_Occurred()) break;
        }
      } else {
        v = PyDict_GetItemWithError(d, name);
      }
      if (v == nullptr) {
        if (PyErr_Occurred()) {
          PyErr_Clear();
          Py_RETURN_FALSE;
        }
        v = Py_None;
      }
      if (v != PyList_GET_ITEM(kept, i * k + c)) Py_RETURN_FALSE;
      __builtin_prefetch(v);
    }
  }
  // every object is the kept one: now their sizes and addresses
  try {
    std::vector<const c10::TensorImpl*> impls(total);
    std::vector<const c10::StorageImpl*> stores(total);
    for (Py_ssize_t at = 0; at < total; ++at) {
      PyObject* v = PyList_GET_ITEM(kept, at);
      if (v == Py_None) {
        if (mk[2 * at] != 0 || mk[2 * at + 1] != 0) Py_RETURN_FALSE;
        impls[at] = nullptr;
        continue;
      }
      if (!THPVariable_Check(v)) Py_RETURN_FALSE;
      const c10::TensorImpl* t = THPVariable_Unpack(v).unsafeGetTensorImpl();
      impls[at] = t;
      __builtin_prefetch(t);  // its storage, and its sizes a cache line further
      __builtin_prefetch(reinterpret_cast<const char*>(t) + 128);
    }
    for (Py_ssize_t at = 0; at < total; ++at) {
      const c10::TensorImpl* t = impls[at];
      if (t == nullptr) continue;
      const c10::StorageImpl* st = t->unsafe_storage().unsafeGetStorageImpl();
      if (st == nullptr ||
          static_cast<uint64_t>(t->numel()) * 16 + t->dtype().itemsize() != mk[2 * at + 1]) {
        Py_RETURN_FALSE;
      }
      stores[at] = st;
      __builtin_prefetch(st);
    }
    for (Py_ssize_t at = 0; at < total; ++at) {
      const c10::TensorImpl* t = impls[at];
      if (t == nullptr) continue;
      const int64_t itemsize = static_cast<int64_t>(t->dtype().itemsize());
      const char* data =
          static_cast<const char*>(stores[at]->data()) + t->storage_offset() * itemsize;
      if (reinterpret_cast<uint64_t>(data) != mk[2 * at] ||
          !holds(t, stores[at], t->numel(), itemsize)) {
        Py_RETURN_FALSE;
      }
    }
  } catch (const std::exception&) {  // no memory for the vectors; a tensor without sizes
    PyErr_Clear();
    Py_RETURN_FALSE;
  }
  Py_RETURN_TRUE;
}

// states(state, at, params, kept) -> bool: whether the entries of the dict `state` from
// position `at` on (in its order) are keyed by the objects of `params`, in order, and
// hold the objects of `kept`, none of them an empty dict. Where it says True,
// [state.get(p) for p in params] is `kept`, element for element, without hashing a
// single tensor (their __hash__ is a Python function).
PyObject* states(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 || !PyDict_Check(args[0]) || !PyLong_Check(args[1]) ||
      !PyList_CheckExact(args[2]) || !PyList_CheckExact(args[3])) {
    Py_RETURN_FALSE;
  }
  PyObject* state = args[0];
  PyObject* params = args[2];
  PyObject* kept = args[3];
  const Py_ssize_t at = PyLong_AsSsize_t(args[1]), n = PyList_GET_SIZE(params);
  if (at < 0 || PyList_GET_SIZE(kept) != n || PyDict_GET_SIZE(state) < at + n) {
    PyErr_Clear();
    Py_RETURN_FALSE;
  }
  Py_ssize_t pos = 0, i = 0, j = 0;
  PyObject *key, *value;
  while (j < n && PyDict_Next(state, &pos, &key, &value)) {
    if (i++ < at) continue;
    if (key != PyList_GET_ITEM(params, j) || value != PyList_GET_ITEM(kept, j)) {
      Py_RETURN_FALSE;
    }
    if (!(PyDict_Check(value) && PyDict_GET_SIZE(value) > 0)) Py_RETURN_FALSE;
    ++j;
  }
  if (j == n) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
}

// bump(tensors): each tensor's version counter incremented, as
// torch.autograd.graph.increment_version does (after the kernel wrote through pointers):
// inference tensors, which have no version counter, are skipped as it skips them.
PyObject* bump(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 1 || !PyList_CheckExact(args[0])) {
    PyErr_SetString(PyExc_TypeError, "bump() takes one list of tensors");
    return nullptr;
  }
  PyObject* lst = args[0];
  const Py_ssize_t n = PyList_GET_SIZE(lst);
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!THPVariable_Check(PyList_GET_ITEM(lst, i))) {
      PyErr_SetString(PyExc_TypeError, "bump() takes one list of tensors");
      return nullptr;
    }
  }
  try {
    for (Py_ssize_t i = 0; i < n; ++i) {
      const at::Tensor& t = THPVariable_Unpack(PyList_GET_ITEM(lst, i));
      if (!t.is_inference()) torch::autograd::impl::bump_version(t);
    }
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"gather", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gather)),
     METH_FASTCALL, "the gradients and addresses of a kept kernel batch, or None"},
    {"still", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(still)),
     METH_FASTCALL, "whether state dicts still hold the kept objects"},
    {"states", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(states)),
     METH_FASTCALL, "whether a state holds the kept dicts of params, in order"},
    {"bump", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(bump)),
     METH_FASTCALL, "increment the version counters of tensors"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "lrkit_native", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_lrkit_native() { return PyModule_Create(&module_def); }
