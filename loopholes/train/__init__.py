"""Training on TRL: GRPO in a game (:mod:`loopholes.train.grpo`) and run directories (:mod:`loopholes.train.rundir`)."""
