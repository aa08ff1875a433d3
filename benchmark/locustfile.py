"""Load test with Locust: ``locust -f benchmark/locustfile.py --host http://localhost:3000``.

Each simulated user uploads one real test image per request to the adaptively
batched ``/classify`` endpoint, now and then asks for a batch of 64 images as
one ``.npy`` array. Install Locust separately (``pip install locust``); it is not
a dependency of the project.
"""

from __future__ import annotations

import io

import numpy as np
from locust import HttpUser, between, task

from fashion.samples import sample_images, sample_paths

IMAGES = [p.read_bytes() for p in sample_paths()]
PIXELS, _ = sample_images()


def npy_body(count: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, PIXELS[np.arange(count) % len(PIXELS)], allow_pickle=False)
    return buffer.getvalue()


BATCH = npy_body(64)


class FashionUser(HttpUser):
    wait_time = between(0.0, 0.05)

    @task(20)
    def classify_one(self) -> None:
        image = IMAGES[np.random.randint(len(IMAGES))]
        self.client.post("/classify", files={"images": ("x.png", image, "image/png")}, name="/classify")

    @task(1)
    def classify_array(self) -> None:
        self.client.post("/classify_array", data=BATCH, headers={"Content-Type": "application/x-npy"},
                         name="/classify_array (64)")
