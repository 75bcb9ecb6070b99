"""Models made in code: the small reference ChangeNet and the FAN-size realistic one."""
