"""threadpoolctl support: fastopt's thread pool as a library threadpoolctl can see and limit.

fastopt runs its large jobs on its own pool (``fastopt/_core/pool.c``), not on OpenMP, so
threadpoolctl would not find it; this module registers a controller for it (``user_api`` and
``internal_api`` "fastopt"). ``threadpool_limits(1)`` or ``threadpool_limits(1, user_api="fastopt")``
then limit fastopt like any BLAS or OpenMP runtime, and ``threadpool_info()`` lists it.
"""

CONTROLLER = None


def register(version):
    """Register the controller if threadpoolctl (>= 3.0, with ``register``) is installed."""
    global CONTROLLER
    if CONTROLLER is not None:
        return CONTROLLER
    try:
        import threadpoolctl
    except ImportError:
        return None
    if not hasattr(threadpoolctl, "register"):
        return None

    class FastoptController(threadpoolctl.LibController):
        user_api = "fastopt"
        internal_api = "fastopt"
        # the extension module that holds the pool: _fastopt_threads.<abi>.so
        filename_prefixes = ("_fastopt_threads",)

        def get_num_threads(self):
            return self.dynlib.fastopt_pool_get_num_threads()

        def set_num_threads(self, num_threads):
            self.dynlib.fastopt_pool_set_num_threads(int(num_threads))

        def get_version(self):
            return version

    threadpoolctl.register(FastoptController)
    CONTROLLER = FastoptController
    return CONTROLLER
