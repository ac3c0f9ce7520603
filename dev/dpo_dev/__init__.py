"""Development tooling, outside the runtime package and the image.

``cluster``: a local etcd + kube-apiserver (+ controller-manager) built from Go modules;
``demo``: ``make demo``. ``python -m dpo_dev cluster up|down`` starts and stops the local
control plane. ``make venv`` puts ``dev/`` on the virtualenv's path.
"""
