# Evaluates a Vagrantfile against a stand-in for Vagrant's configuration API
# and prints, as JSON, what it defines: its LINKS and ROLES, and per machine
# the box, NICs, provisioners and provider settings. tests/tests/vagrant.rs
# compares that with tests/topology.toml and vagrant/coresvc.toml.
#
# Usage: ruby record.rb path/to/Vagrantfile
require "json"

# Provider settings (`lv.memory = 1024`, `lv.boot "network"`), and what a
# provider block overrides (`override.vm.box = ...`), by name.
class Settings
  attr_reader :data

  def initialize
    @data = {}
  end

  def vm
    self
  end

  def method_missing(name, *args, **kw)
    key = name.to_s.delete_suffix("=")
    value = kw.empty? ? (args.length == 1 ? args.first : args) : args + [kw]
    (@data[key] ||= []) << value
    nil
  end

  def respond_to_missing?(*)
    true
  end
end

class Machine
  attr_reader :data

  def initialize(name, opts)
    @data = { "name" => name, "define" => opts, "box" => nil, "networks" => [], "provisioners" => [],
              "providers" => {} }
  end

  def vm
    self
  end

  def box=(box)
    @data["box"] = box
  end

  def hostname=(name)
    @data["hostname"] = name
  end

  def network(type, **opts)
    @data["networks"] << opts.merge(type: type)
  end

  def synced_folder(from, to, **opts)
    (@data["synced_folders"] ||= []) << opts.merge(from: from, to: to)
  end

  def provision(name, **opts)
    @data["provisioners"] << opts.merge(name: name)
  end

  def provider(name)
    settings = Settings.new
    override = Settings.new
    yield settings, override
    @data["providers"][name.to_s] = { "settings" => settings.data, "override" => override.data }
  end
end

# The top-level `config`: settings for every machine, and `define`.
class TopConfig < Machine
  attr_reader :machines

  def initialize
    super("*", {})
    @machines = []
  end

  def define(name, **opts)
    m = Machine.new(name.to_s, opts)
    yield m
    @machines << m.data
  end
end

module Vagrant
  CONFIG = TopConfig.new

  def self.configure(_version)
    yield CONFIG
  end
end

file = File.expand_path(ARGV.fetch(0))
Dir.chdir(File.dirname(file)) do
  eval(File.read(file), TOPLEVEL_BINDING, file)
end
puts JSON.pretty_generate(
  "links" => LINKS,
  "roles" => ROLES,
  "all" => Vagrant::CONFIG.data,
  "machines" => Vagrant::CONFIG.machines,
)
