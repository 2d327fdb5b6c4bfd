"""The learning loop, data side: a firm's event export (:mod:`loop.events`), the simulator
writing one (:mod:`loop.simulated`) and the one feature builder from an export to the
observation every policy sees (:mod:`loop.features`)."""
