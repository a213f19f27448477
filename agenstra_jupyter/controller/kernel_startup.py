# Run inside a Python kernel whose working directory lies in an agent's project: takes ''
# and relative entries, the working directory and anything in the agent's project off
# `sys.path` (provisioner.py).
#
# Two ways in, neither leaving a name in the user's namespace:
# - as the kernel's PYTHONSTARTUP, which IPython runs while the kernel starts (in the user's
#   namespace, after it put '' on sys.path): for kernels the provisioner cannot hand
#   `--IPKernelApp.ignore_cwd` (a wrapper script in the kernelspec's argv). The projects come
#   in AGENSTRA_KERNEL_PROJECTS; the user's own PYTHONSTARTUP (AGENSTRA_USER_PYTHONSTARTUP,
#   only when absolute and outside the project) runs next and is what child processes see;
# - with runpy, run_name "agenstra_scrub" and AGENSTRA_PROJECTS in its globals: a kernel
#   started before its folder became an agent's project.
# (Comments, not a docstring: run in the user's namespace, it would set __doc__ there.)


def _agenstra_protect() -> None:
    import os
    import sys

    shared = globals()
    scrub = shared.get("__name__") == "agenstra_scrub"
    if scrub:
        projects = [str(folder) for folder in shared.get("AGENSTRA_PROJECTS", ())]
    else:
        listed = os.environ.pop("AGENSTRA_KERNEL_PROJECTS", "")
        projects = [folder for folder in listed.split(os.pathsep) if folder]
    folders = [os.getcwd(), *projects]
    # The interpreter's own paths stay: one installed in the project is the agent's anyway.
    own = {os.path.realpath(prefix) for prefix in (sys.prefix, sys.base_prefix)}

    def below(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)

    def agents(entry: object) -> bool:
        if not isinstance(entry, str):
            return False
        if not entry or not os.path.isabs(entry):
            return True  # '' or relative: the working directory
        forms = {os.path.normpath(entry), os.path.realpath(entry)}
        if any(below(form, prefix) for form in forms for prefix in own):
            return False
        return any(below(form, folder) for form in forms for folder in folders)

    sys.path[:] = [entry for entry in sys.path if not agents(entry)]
    if scrub:
        return
    user_startup = os.environ.pop("AGENSTRA_USER_PYTHONSTARTUP", "")
    if user_startup:
        os.environ["PYTHONSTARTUP"] = user_startup
    else:
        os.environ.pop("PYTHONSTARTUP", None)
    if user_startup and os.path.isfile(user_startup):
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            return
        if user_startup.endswith((".ipy", ".ipynb")):
            shell.safe_execfile_ipy(user_startup)
        else:
            shell.safe_execfile(user_startup, shell.user_ns)


if __name__ in ("__main__", "agenstra_scrub"):  # not when imported (by the server)
    _agenstra_protect()
del _agenstra_protect
