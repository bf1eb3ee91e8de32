"""Making datasets in the simulator, D4RL's way: behavior policies trained with online SAC
(``behavior``, its run files in ``behavior_files``) and rollouts of them written as D4RL or
Minari datasets (``collect``). It sits on top of the learner; ``micro.data`` only reads."""
