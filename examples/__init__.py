"""The example models and what shows them off: ``make demo`` (``python -m examples.demo``) and the MME example
(``python -m examples.mme``). Lives next to the artifacts it serves; not part of the wheel (it imports ``toolkit``,
never the other way round). Run from the checkout's root.
"""
