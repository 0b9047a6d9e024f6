"""Process runtime: thread policy, batch size from free memory, progress lines, the installed version, process state
changed only inside a block, safe replacement of output folders."""
