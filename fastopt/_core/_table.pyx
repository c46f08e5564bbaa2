# Which kernel module the drivers call: fastopt._backend picks one for the running CPU at import
# and hands its table over with use().
from cpython.pycapsule cimport PyCapsule_GetPointer

from fastopt._core._kernel_api cimport KernelTable

cdef const KernelTable* _table = NULL
cdef object _module = None


cdef const KernelTable* kernel_table() noexcept nogil:
    return _table


cdef object kernel_module():
    return _module


def use(module):
    """Make the drivers call ``module``'s kernels (a fastopt._core._kernels* module)."""
    global _table, _module
    _table = <const KernelTable*>PyCapsule_GetPointer(module.table_capsule(),
                                                       b"fastopt._core.KernelTable")
    _module = module
