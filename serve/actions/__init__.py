"""Server-side actions (`tasktune serve --actions MODULE`): the simulated libraries that ship (grid_sim,
smarthome_sim: REGISTRY, tool name -> callable), loading and checking a library (loading.py) and running its
functions (runner.py)."""
