"""Server-side actions (`tasktune serve --actions MODULE`): the simulated libraries that ship (grid_sim,
smarthome_sim: REGISTRY, tool name -> callable) and running a library's functions (runner.py)."""
