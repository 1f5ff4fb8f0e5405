"""The engine: attach / disable / detach a guard, the registered attention function that applies the
methods' edits (a readable reference path and the fast paths `FastPaths` chooses), per-guard state,
taps, KV-cache compatibility and input preparation. It knows methods only through
`lvlm_guard.methods.base.Intervention` and the edit types of `edits.py`."""
