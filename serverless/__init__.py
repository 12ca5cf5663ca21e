"""shoal on AWS Lambda + S3: a coordinator, a tree of allocators and per-partition processors (see docs/serverless.md).

Modules: :mod:`.handler` (the Lambda entry point, ``shoal.serverless.handler.handler``), :mod:`.tree` (pre-order
tree of ``b + ... + b^L`` allocators), :mod:`.partitioned` / :mod:`.osq_backend` (the versioned storage layout and
the flat, kmeans and osq backends), :mod:`.cache` (container data retention), :mod:`.payload` (6 MB limit, spills),
:mod:`.invokers` (boto3 and in-process), :mod:`.emulator` (``shoal lambda-local``), :mod:`.deploy` (``shoal
deploy``), :mod:`.cost` (GB-s and request pricing), :mod:`.client` (``search``). Imports here stay lazy so that
``import shoal`` does not pull in boto3.
"""
