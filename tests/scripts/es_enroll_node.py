#!/usr/bin/env python3
"""Calls musterd's enroll-node endpoint through Elastic's official Python client, as a new
Elasticsearch node's tooling would, and loads what it answers. Prints JSON:

  es_enroll_node.py URL CA_PEM      (the admin password in MUSTER_ADMIN_PASSWORD)

{"product_header": …, "nodes_addresses": [...], "loaded": [the keys and certificates that load]}
"""
import base64
import json
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from elasticsearch import Elasticsearch

url, ca = sys.argv[1], sys.argv[2]
es = Elasticsearch(url, ca_certs=ca, basic_auth=("admin", os.environ["MUSTER_ADMIN_PASSWORD"]))
# Raises UnsupportedProductError unless the answer says it comes from Elasticsearch.
r = es.security.enroll_node()
body = r.body
loaded = []
for k in ("http_ca_cert", "transport_ca_cert", "transport_cert"):
    x509.load_der_x509_certificate(base64.b64decode(body[k]))
    loaded.append(k)
for k in ("http_ca_key", "transport_key"):
    serialization.load_der_private_key(base64.b64decode(body[k]), password=None)
    loaded.append(k)
print(json.dumps({
    "product_header": r.meta.headers.get("x-elastic-product"),
    "nodes_addresses": body["nodes_addresses"],
    "loaded": sorted(loaded),
}))
