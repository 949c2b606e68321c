# GPU image for data generation (vLLM) and training (accelerate + DeepSpeed) with hpl.
#   docker build -f docker/gpu.Dockerfile -t hpl-gpu:latest .
#   docker run --gpus all --ipc=host -v $HPL_DATA_DIR:/data -v $PWD/runs:/runs hpl-gpu:latest \
#       hpl-eval --env webshop --agent vllm:Qwen/Qwen2.5-7B-Instruct --out /runs/qwen.json
# Not built by CI (no Docker engine or GPU there).
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 HPL_DATA_DIR=/data HPL_CACHE_DIR=/cache \
    PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev python3-pip git cmake g++ mariadb-server \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/hpl
COPY pyproject.toml README.md LICENSE ./
COPY hpl_envs hpl_envs
COPY hpl_data hpl_data
COPY hpl_train hpl_train
# vllm brings its matching CUDA torch; deepspeed for ZeRO-3 through accelerate
RUN pip install --upgrade pip \
    && pip install 'vllm>=0.8' \
    && pip install -e '.[vllm,train,plot,alfworld]' deepspeed \
    && python -c "import hpl_envs, hpl_data, hpl_train, vllm, torch; print('torch', torch.__version__)"

VOLUME ["/data", "/cache", "/runs"]
CMD ["hpl-eval", "--help"]
