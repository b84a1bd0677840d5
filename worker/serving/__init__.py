"""The pipeline as a Ray Serve application (`textworker serve FILE`).

- `payloads`: the HTTP request and response models (validated at the edge).
- `chain`: runs the stages in order for one request's documents, honouring `when`.
- `stage_server`: one Serve deployment per stage; holds the loaded model and batches
  calls from concurrent requests together (`@serve.batch`).
- `ingress`: the FastAPI ingress deployment (`/v1/documents`, `/healthz`, `/readyz`),
  the concurrent-request bound, and the routers other parts of textworker mount.
- `app`: placement (resources, replicas, autoscaling, GPU fallback) and the application
  builder that `serve.run`, `textworker serve` and a RayService `serveConfigV2` use.
- `commands`: the `textworker serve` command.
"""
