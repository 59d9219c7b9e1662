# The project in Ray's Python 3.11 GPU image, for KubeRay (k8s/) or any container platform.
#   docker build -t your-registry/msinn-pipeline:0.2.0 . && docker push your-registry/msinn-pipeline:0.2.0
# Keep the base image's Ray version equal to the one requirements-lock.txt pins (a test checks it).
FROM rayproject/ray:2.60.0-py311-gpu
WORKDIR /home/ray/msinn-pipeline
COPY --chown=ray:users requirements-lock.txt .
RUN python -m pip install --no-cache-dir -r requirements-lock.txt
COPY --chown=ray:users . .
RUN python -m pip install --no-cache-dir --no-deps -e .
