"""Simulated action libraries: tool name -> callable (`tasktune serve --actions MODULE`)."""
