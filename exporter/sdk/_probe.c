/* exporter.sdk._probe: the read path of SlotTable (_slots.py) in one C loop.
 *
 * find(index, ids, keys, out, bits): for each key, the slot that holds it or -1, by the
 * probe _slots.py describes (home position fib(key) >> (64 - bits), then +1, +2, ...;
 * -1 ends a path, -2 is a tombstone to step over). index int32[2^bits], ids int64[n],
 * keys int64[k], out int64[k] (written). The numpy version costs ~15 array operations
 * per call whatever the number of keys; a scoring request makes one call per field
 * with ~100 keys, where those operations, not the probes, were the cost.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static int view(PyObject *obj, Py_buffer *b, Py_ssize_t item, int writable, const char *what) {
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)))
        return -1;
    if (b->itemsize != item || b->len % item) {
        PyBuffer_Release(b);
        PyErr_Format(PyExc_TypeError, "%s: need a contiguous array of %zd-byte items", what,
                     item);
        return -1;
    }
    return 0;
}

static PyObject *find(PyObject *self, PyObject *args) {
    PyObject *oi, *od, *ok, *oo;
    int bits;
    Py_buffer bi, bd, bk, bo;
    if (!PyArg_ParseTuple(args, "OOOOi", &oi, &od, &ok, &oo, &bits)) return NULL;
    if (bits < 1 || bits > 62) return PyErr_Format(PyExc_ValueError, "bits %d", bits);
    if (view(oi, &bi, 4, 0, "index")) return NULL;
    if (view(od, &bd, 8, 0, "ids")) goto e1;
    if (view(ok, &bk, 8, 0, "keys")) goto e2;
    if (view(oo, &bo, 8, 1, "out")) goto e3;
    if (bi.len / 4 != (Py_ssize_t)1 << bits || bo.len != bk.len) {
        PyErr_SetString(PyExc_ValueError, "index must hold 2^bits items, out one per key");
        goto e4;
    }
    const int32_t *index = bi.buf;
    const int64_t *ids = bd.buf, *keys = bk.buf;
    int64_t *out = bo.buf, n_ids = bd.len / 8;
    uint64_t mask = ((uint64_t)1 << bits) - 1;
    Py_ssize_t k = bk.len / 8;
    for (Py_ssize_t i = 0; i < k; i++) {
        uint64_t pos = ((uint64_t)keys[i] * 0x9E3779B97F4A7C15ULL) >> (64 - bits);
        int64_t slot = -1;
        for (uint64_t step = 0; step <= mask; step++, pos = (pos + 1) & mask) {
            int32_t cur = index[pos];
            if (cur == -1) break;
            if (cur >= 0 && cur < n_ids && ids[cur] == keys[i]) {
                slot = cur;
                break;
            }
        }
        out[i] = slot;
    }
    PyBuffer_Release(&bo);
    PyBuffer_Release(&bk);
    PyBuffer_Release(&bd);
    PyBuffer_Release(&bi);
    Py_RETURN_NONE;
e4:
    PyBuffer_Release(&bo);
e3:
    PyBuffer_Release(&bk);
e2:
    PyBuffer_Release(&bd);
e1:
    PyBuffer_Release(&bi);
    return NULL;
}

static PyMethodDef methods[] = {
    {"find", find, METH_VARARGS, "find(index, ids, keys, out, bits): slots of keys, -1 absent."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "exporter.sdk._probe",
                                    "SlotTable's read path in C (see _probe.c).", -1, methods};

PyMODINIT_FUNC PyInit__probe(void) { return PyModule_Create(&module); }
