"""The core: SAM variants, the adapters and their layers, trained runs, merging and its fidelity.

Four sub-rooms, each importing only those below it (``tests/test_architecture.py``
enforces the order, function-level imports included):

    model     -> common                      variants, TinyViT, weights, heads, classes, modes
    adapters  -> model, common               config, ops, layers, injection, testing
    runs      -> adapters, model, common     checkpoint, architecture, peft_adapter
    merging   -> runs, adapters, model, common
                                             merge, folds, recovery, fidelity, calibration,
                                             report, spec, run, files

It may import ``common`` only: never ``training``, ``exporters``, ``runtime`` or the CLI.
"""
