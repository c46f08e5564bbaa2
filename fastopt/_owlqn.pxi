# OWL-QN placeholder (filled in below).
def _run_owlqn(*args):
    raise NotImplementedError
