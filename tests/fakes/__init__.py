"""Test doubles for services this machine cannot reach. Each one is named for what it stands in for."""
