-- PostgreSQL's first start (docker-entrypoint-initdb.d): the auth app's own database beside the tracking
-- store's (POSTGRES_DB=mlflow); both belong to POSTGRES_USER.
CREATE DATABASE mlflow_auth;
