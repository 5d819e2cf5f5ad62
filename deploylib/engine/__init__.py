"""The engine: runs a plan's stages (runner), a PER_BATCH group batch after batch
(batches) and a PER_REGION group in every region at once (regions). It knows stages,
their state and their undo, never what a step does: the steps are in deploylib.steps,
the procedures in deploylib.plan."""
