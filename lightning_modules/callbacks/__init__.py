"""Lightning callbacks and loggers that Lightning does not ship: kimg checkpoints, exact resume, sample grids,
tick lines, an appending CSV logger, and the schedule in images seen that they share."""
