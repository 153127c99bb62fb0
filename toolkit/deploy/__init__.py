"""``tritonctl deploy``: the manifest's endpoints as SageMaker endpoints, through boto3.

Layered above ``repository`` and ``mme`` (it builds tarballs from the generated repository) and below ``cli``.
``artifacts`` builds the tarballs, ``plan`` computes the AWS calls from the manifest and what exists, ``apply`` runs
them, ``lifecycle`` answers status and deletes. Every AWS call goes through ``plan.Call``, so ``deploy plan`` shows
exactly what ``deploy sagemaker`` would run.
"""
