"""Stand-ins for pynvml and cupy, for the GPU code's tests on machines without a GPU.

Put this folder on PYTHONPATH and a process imports them as `pynvml` and `cupy`;
in the test process itself they are put in sys.modules under those names.
"""
